"""Paged decode attention: one new query token per sequence over its whole paged context.

Stage 1 runs one program per (sequence, KV head, context split). The program packs the `group = Hq / Hkv` query
heads that share the KV head into the rows of one tile, so each K/V tile is loaded once for the whole group and
both products are `tl.dot`s (rows padded to 16). It walks its share of the context in `BLOCK_N`-token tiles; each
token's address comes from the block table (`block → page, slot`), so the tile size is independent of block and
page size. It keeps an online softmax (base 2) and writes a normalised partial output and its log-sum-exp.
Stage 2 merges the splits of each (sequence, query head) by their log-sum-exps. Splitting the context keeps every
SM busy when the batch × KV heads alone would not fill the GPU (long contexts, small batches).

Nothing in the launch depends on the data on the device (the split count comes from the host-side maximum
context), so the launch can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from workers.kernels.common import check_last_dim_contiguous, check_runnable, dot_tile, upcast_dot
from workers.kernels.paged_tile import load_kv_tile, online_softmax_step

LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, block_tables_ptr, context_lens_ptr, part_ptr, lse_ptr,
    stride_qb, stride_qh,
    stride_page, stride_slot, stride_token, stride_head,
    stride_btb, blocks_per_page,
    stride_pb, stride_ph, stride_ps,
    stride_lb, stride_lh,
    scale_log2, split_tokens,
    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    context = tl.load(context_lens_ptr + b)
    start = split * split_tokens
    end = tl.minimum(context, start + split_tokens)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM_PAD)
    heads = kvh * GROUP + g
    row_mask = g < GROUP
    dim_mask = d < HEAD_DIM
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    bt_row = block_tables_ptr + b * stride_btb
    for n0 in range(start, end, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        tok_mask = t < end
        kt, v = load_kv_tile(k_ptr, v_ptr, bt_row, t, tok_mask, d, dim_mask, kvh, stride_page, stride_slot,
                             stride_token, stride_head, blocks_per_page, BLOCK_SIZE, DOT_FP32)
        m_i, l_i, acc = online_softmax_step(q, kt, v, tok_mask[None, :], m_i, l_i, acc, scale_log2)

    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    part = part_ptr + b * stride_pb + heads[:, None] * stride_ph + split * stride_ps + d[None, :]
    tl.store(part, out, mask=row_mask[:, None] & dim_mask[None, :])
    tl.store(lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=row_mask)


@triton.jit
def _merge_splits_kernel(
    part_ptr, lse_ptr, out_ptr, num_splits,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ob, stride_oh,
    SPLIT_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, SPLIT_PAD)
    d = tl.arange(0, DIM_PAD)
    split_mask = s < num_splits
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + s, mask=split_mask, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    mask = split_mask[:, None] & (d < HEAD_DIM)[None, :]
    part = tl.load(part_ptr + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :], mask=mask,
                   other=0.0)
    denom = tl.sum(w, 0)
    out = tl.sum(part * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def plan_splits(batch: int, num_kv_heads: int, max_context: int, block_n: int, *, num_sms: int,
                max_splits: int = 32) -> int:
    """Splits per sequence so that batch × KV heads × splits covers about two waves of SMs."""
    tiles = max(1, math.ceil(max_context / block_n))
    want = math.ceil(2 * num_sms / max(1, batch * num_kv_heads))
    return max(1, min(want, tiles, max_splits))


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, *, max_context: int, scale: float | None = None, num_splits: int | None = None,
    block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
) -> torch.Tensor:
    """Attention of q [B, Hq, D] over each sequence's first `context_lens[b]` cached tokens → [B, Hq, D].

    `k_cache`/`v_cache` are one layer's views `[pages, blocks_per_page, block_size, Hkv, D]`; `block_tables`
    [B, max_blocks] holds block ids; `max_context` is a host-side bound on `context_lens` (sets the split count).
    """
    check_runnable(q, k_cache)
    check_last_dim_contiguous(q=q, k_cache=k_cache, v_cache=v_cache)
    batch, num_heads, head_dim = q.shape
    _, blocks_per_page, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    if num_splits is None:
        num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 1
        num_splits = plan_splits(batch, num_kv_heads, max_context, block_n, num_sms=num_sms)
    split_tokens = block_n * math.ceil(math.ceil(max(max_context, 1) / num_splits) / block_n)
    part = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    scale = scale if scale is not None else head_dim ** -0.5
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, part, lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
        block_tables.stride(0), blocks_per_page,
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        scale * LOG2E, split_tokens,
        BLOCK_SIZE=block_size, GROUP=group, GROUP_PAD=dot_tile(group), HEAD_DIM=head_dim,
        DIM_PAD=dot_tile(head_dim), BLOCK_N=block_n, DOT_FP32=upcast_dot(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    _merge_splits_kernel[(batch, num_heads)](
        part, lse, out, num_splits,
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
        SPLIT_PAD=triton.next_power_of_2(num_splits), HEAD_DIM=head_dim, DIM_PAD=triton.next_power_of_2(head_dim),
    )
    return out


def gather_context(k_cache: torch.Tensor, v_cache: torch.Tensor, block_row: torch.Tensor,
                   length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [length, Hkv, D] of one sequence, block by block (reference helper, clarity over speed)."""
    _, blocks_per_page, block_size, _, _ = k_cache.shape
    ks, vs = [], []
    for i in range(math.ceil(length / block_size)):
        block = int(block_row[i])
        page, slot = divmod(block, blocks_per_page)
        ks.append(k_cache[page, slot])
        vs.append(v_cache[page, slot])
    return torch.cat(ks)[:length], torch.cat(vs)[:length]


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_positions: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """Softmax attention in fp32 of q [Tq, Hq, D] at `q_positions` over k/v [Tk, Hkv, D] (key j visible iff j ≤ pos)."""
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale
    visible = torch.arange(k.shape[0], device=q.device)[None, :] <= q_positions[:, None]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), vf)


def paged_decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, *, scale: float | None = None,
) -> torch.Tensor:
    """Plain-torch reference: gather each sequence's context block by block, softmax in fp32."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        length = int(context_lens[b])
        if length == 0:
            continue
        k, v = gather_context(k_cache, v_cache, block_tables[b], length)
        pos = torch.tensor([length - 1], device=q.device)
        out[b] = attention_ref(q[b : b + 1], k, v, pos, scale)[0].to(q.dtype)
    return out
