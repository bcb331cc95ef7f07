"""KV write: scatter the new tokens' K and V of one layer into their pages.

`slots[n] = block_id · block_size + offset` names where token n goes (negative: skip, for padded batches). The
cache arguments are one layer's views `[pages, blocks_per_page, block_size, kv_heads, head_dim]` of
`layout.kv_views`; their strides are passed through, so any paged layout works.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workers.kernels.common import check_last_dim_contiguous, check_runnable


@triton.jit
def _kv_write_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_kn, stride_kh, stride_vn, stride_vh,
    stride_page, stride_slot, stride_token, stride_head,
    blocks_per_page,
    BLOCK_SIZE: tl.constexpr, NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
):
    n = tl.program_id(0)
    slot = tl.load(slots_ptr + n).to(tl.int32)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    page = (block // blocks_per_page).to(tl.int64)
    dst = page * stride_page + (block % blocks_per_page) * stride_slot + (slot % BLOCK_SIZE) * stride_token
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, DIM_PAD)
    mask = (h < NUM_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
    k = tl.load(key_ptr + n * stride_kn + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(value_ptr + n * stride_vn + h[:, None] * stride_vh + d[None, :], mask=mask)
    cache_off = dst + h[:, None] * stride_head + d[None, :]
    tl.store(k_cache_ptr + cache_off, k, mask=mask)
    tl.store(v_cache_ptr + cache_off, v, mask=mask)


def kv_write(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slots: torch.Tensor) -> None:
    """Write key/value [N, kv_heads, head_dim] into one layer's cache views at `slots` [N] (int32/int64)."""
    check_runnable(key, k_cache)
    check_last_dim_contiguous(key=key, value=value, k_cache=k_cache, v_cache=v_cache)
    if k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must share strides")
    n, num_heads, head_dim = key.shape
    if n == 0:
        return
    _, blocks_per_page, block_size, _, _ = k_cache.shape
    _kv_write_kernel[(n,)](
        key, value, k_cache, v_cache, slots,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
        blocks_per_page,
        BLOCK_SIZE=block_size, NUM_HEADS=num_heads, HEADS_PAD=triton.next_power_of_2(num_heads),
        HEAD_DIM=head_dim, DIM_PAD=triton.next_power_of_2(head_dim),
    )


def kv_write_ref(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slots: torch.Tensor) -> None:
    """Plain-torch reference (also the engine's CPU path): index assignment into the paged views."""
    keep = slots >= 0
    slots = slots[keep].long()
    _, blocks_per_page, block_size, _, _ = k_cache.shape
    block = torch.div(slots, block_size, rounding_mode="floor")
    page = torch.div(block, blocks_per_page, rounding_mode="floor")
    slot_in_page, offset = block % blocks_per_page, slots % block_size
    k_cache[page, slot_in_page, offset] = key[keep].to(k_cache.dtype)
    v_cache[page, slot_in_page, offset] = value[keep].to(v_cache.dtype)
