"""Triton device functions both attention kernels share: loading one K/V tile through the block table, and one
step of the online softmax. They are inlined into the calling kernel."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_tile(k_ptr, v_ptr, bt_row, t, tok_mask, d, dim_mask, kvh,
                 stride_page, stride_slot, stride_token, stride_head, blocks_per_page,
                 BLOCK_SIZE: tl.constexpr, DOT_FP32: tl.constexpr):
    """K transposed [D, N] and V [N, D] of tokens `t` (positions in the sequence) for KV head `kvh`.

    Each token's block comes from the block table row, so the tile need not align with blocks or pages.
    """
    block = tl.load(bt_row + t // BLOCK_SIZE, mask=tok_mask, other=0).to(tl.int32)
    page = (block // blocks_per_page).to(tl.int64)
    addr = (page * stride_page + (block % blocks_per_page) * stride_slot
            + (t % BLOCK_SIZE) * stride_token + kvh * stride_head)
    kt = tl.load(k_ptr + addr[None, :] + d[:, None], mask=tok_mask[None, :] & dim_mask[:, None], other=0.0)
    v = tl.load(v_ptr + addr[:, None] + d[None, :], mask=tok_mask[:, None] & dim_mask[None, :], other=0.0)
    if DOT_FP32:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    return kt, v


@triton.jit
def online_softmax_step(q, kt, v, visible, m_i, l_i, acc, scale_log2):
    """Fold one tile into the running max `m_i`, normaliser `l_i` and output `acc` (base-2 exponents).

    Rows that have seen no visible key keep m = −inf; the exponent is guarded against (−inf) − (−inf).
    """
    s = tl.where(visible, tl.dot(q, kt) * scale_log2, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc
