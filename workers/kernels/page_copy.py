"""Page copy: move blocks between two paged buffers — device → host (swap-out, checkpoint) and host → device (swap-in).

Both sides use the page layout of `layout.py` (their page counts and page sizes may differ), so one (block, layer)
is one contiguous run of K then V (`run_elems` elements). Program (pair i, layer l, chunk c) copies chunk c of the
run of block `src_blocks[i]` to block `dst_blocks[i]`. Strides are passed for both sides. On CUDA the host side is
pinned memory, which the GPU reads and writes directly (zero-copy over the host link), so a swap of scattered
blocks is one launch instead of one cudaMemcpy per block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workers.kernels.common import check_runnable


@triton.jit
def _copy_blocks_kernel(
    src_ptr, dst_ptr, src_blocks_ptr, dst_blocks_ptr,
    src_blocks_per_page, src_stride_page, src_stride_layer, src_stride_slot,
    dst_blocks_per_page, dst_stride_page, dst_stride_layer, dst_stride_slot,
    run_elems, CHUNK: tl.constexpr,
):
    i = tl.program_id(0)
    layer = tl.program_id(1)
    chunk = tl.program_id(2)
    sb = tl.load(src_blocks_ptr + i).to(tl.int32)
    db = tl.load(dst_blocks_ptr + i).to(tl.int32)
    src = ((sb // src_blocks_per_page).to(tl.int64) * src_stride_page + layer * src_stride_layer
           + (sb % src_blocks_per_page) * src_stride_slot)
    dst = ((db // dst_blocks_per_page).to(tl.int64) * dst_stride_page + layer * dst_stride_layer
           + (db % dst_blocks_per_page) * dst_stride_slot)
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    mask = offs < run_elems
    tl.store(dst_ptr + dst + offs, tl.load(src_ptr + src + offs, mask=mask), mask=mask)


def _check_pair(src_k: torch.Tensor, dst_k: torch.Tensor) -> None:
    # Page counts and blocks per page may differ; layers and the block's own shape may not.
    same = src_k.shape[1] == dst_k.shape[1] and src_k.shape[3:] == dst_k.shape[3:] and src_k.dtype == dst_k.dtype
    if not same:
        raise ValueError(f"buffers differ in block shape or dtype: {tuple(src_k.shape)} vs {tuple(dst_k.shape)}")


def copy_blocks(src_k: torch.Tensor, dst_k: torch.Tensor, src_blocks: torch.Tensor, dst_blocks: torch.Tensor,
                *, chunk: int = 1024) -> None:
    """Copy blocks `src_blocks[i]` → `dst_blocks[i]` (K and V, every layer) between two K views of `kv_views`.

    The K view's storage also holds V right after each block's K, so the K view addresses the whole run.
    """
    _check_pair(src_k, dst_k)
    check_runnable(src_k)
    n = src_blocks.shape[0]
    if n == 0:
        return
    _, num_layers, _, block_size, heads, dim = src_k.shape
    run_elems = 2 * block_size * heads * dim
    grid = (n, num_layers, triton.cdiv(run_elems, chunk))
    _copy_blocks_kernel[grid](
        src_k, dst_k, src_blocks, dst_blocks,
        src_k.shape[2], src_k.stride(0), src_k.stride(1), src_k.stride(2),
        dst_k.shape[2], dst_k.stride(0), dst_k.stride(1), dst_k.stride(2),
        run_elems, CHUNK=chunk,
    )


def copy_blocks_ref(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                    src_blocks: torch.Tensor, dst_blocks: torch.Tensor) -> None:
    """Plain-torch reference (also the engine's CPU path): indexed copy of whole blocks across every layer."""
    _check_pair(src_k, dst_k)
    sb, db = src_blocks.long().cpu(), dst_blocks.long().cpu()
    s_page, s_slot = sb // src_k.shape[2], sb % src_k.shape[2]
    d_page, d_slot = db // dst_k.shape[2], db % dst_k.shape[2]
    # [n, layers, block_size, heads, dim] after advanced indexing over (page, slot) with the layer dim sliced.
    dst_k[d_page, :, d_slot] = src_k[s_page, :, s_slot].to(dst_k.device)
    dst_v[d_page, :, d_slot] = src_v[s_page, :, s_slot].to(dst_v.device)
