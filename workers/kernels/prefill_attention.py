"""Paged prefill attention: a chunk of new tokens per sequence over its cached prefix and itself, causally.

The chunk's K/V are written into the pages first (`kv_write`), so keys are read only from the cache: the same
addressing as decode. Queries arrive flat (`cu_q_lens` gives each sequence's rows). One program handles
(sequence, tile of query rows, KV head); its rows are (token, query head of the group) pairs — the group's heads
packed into one tile as in decode, so each K/V tile is loaded once per group. Query token i of a sequence with
`context_lens[b]` tokens after the chunk sits at position `context − q_len + i` and sees keys 0..position.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workers.kernels.common import check_last_dim_contiguous, check_runnable, dot_tile, upcast_dot
from workers.kernels.decode_attention import LOG2E, attention_ref, gather_context
from workers.kernels.paged_tile import load_kv_tile, online_softmax_step


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_q_ptr, block_tables_ptr, context_lens_ptr,
    stride_qn, stride_qh, stride_on, stride_oh,
    stride_page, stride_slot, stride_token, stride_head,
    stride_btb, blocks_per_page, scale_log2,
    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr,
):
    b = tl.program_id(0)
    tile = tl.program_id(1)
    kvh = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start
    if tile * BLOCK_M >= q_len * GROUP:
        return
    context = tl.load(context_lens_ptr + b)
    prefix = context - q_len

    r = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    token = r // GROUP
    head = kvh * GROUP + r % GROUP
    row_mask = token < q_len
    d = tl.arange(0, DIM_PAD)
    dim_mask = d < HEAD_DIM
    pos = prefix + token
    q = tl.load(q_ptr + (q_start + token)[:, None] * stride_qn + head[:, None] * stride_qh + d[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DIM_PAD], tl.float32)
    last_token = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // GROUP, q_len - 1)
    kv_end = prefix + last_token + 1
    bt_row = block_tables_ptr + b * stride_btb
    for n0 in range(0, kv_end, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        tok_mask = t < kv_end
        kt, v = load_kv_tile(k_ptr, v_ptr, bt_row, t, tok_mask, d, dim_mask, kvh, stride_page, stride_slot,
                             stride_token, stride_head, blocks_per_page, BLOCK_SIZE, DOT_FP32)
        visible = tok_mask[None, :] & (t[None, :] <= pos[:, None])
        m_i, l_i, acc = online_softmax_step(q, kt, v, visible, m_i, l_i, acc, scale_log2)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o = out_ptr + (q_start + token)[:, None] * stride_on + head[:, None] * stride_oh + d[None, :]
    tl.store(o, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cu_q_lens: torch.Tensor,
    block_tables: torch.Tensor, context_lens: torch.Tensor, *, max_q_len: int, scale: float | None = None,
    block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
) -> torch.Tensor:
    """Causal attention of flat queries q [N, Hq, D] (sequence b owns rows cu_q_lens[b]:cu_q_lens[b+1]) → [N, Hq, D].

    `context_lens[b]` counts the sequence's tokens including the chunk, whose K/V must already be in the cache.
    `max_q_len` is a host-side bound on the chunk lengths (sets the grid).
    """
    check_runnable(q, k_cache)
    check_last_dim_contiguous(q=q, k_cache=k_cache, v_cache=v_cache)
    num_tokens, num_heads, head_dim = q.shape
    _, blocks_per_page, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    batch = cu_q_lens.shape[0] - 1
    if num_tokens == 0 or batch == 0:
        return out
    block_m = max(block_m, dot_tile(group))
    grid = (batch, triton.cdiv(max_q_len * group, block_m), num_kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, cu_q_lens, block_tables, context_lens,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
        block_tables.stride(0), blocks_per_page, (scale if scale is not None else head_dim ** -0.5) * LOG2E,
        BLOCK_SIZE=block_size, GROUP=group, HEAD_DIM=head_dim, DIM_PAD=dot_tile(head_dim),
        BLOCK_M=block_m, BLOCK_N=block_n, DOT_FP32=upcast_dot(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    return out


def paged_prefill_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cu_q_lens: torch.Tensor,
    block_tables: torch.Tensor, context_lens: torch.Tensor, *, scale: float | None = None,
) -> torch.Tensor:
    """Plain-torch reference: per sequence, gather its context and apply the causal mask, fp32 softmax."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    out = torch.zeros_like(q)
    for b in range(cu_q_lens.shape[0] - 1):
        lo, hi = int(cu_q_lens[b]), int(cu_q_lens[b + 1])
        if hi == lo:
            continue
        context = int(context_lens[b])
        k, v = gather_context(k_cache, v_cache, block_tables[b], context)
        pos = torch.arange(context - (hi - lo), context, device=q.device)
        out[lo:hi] = attention_ref(q[lo:hi], k, v, pos, scale).to(q.dtype)
    return out
