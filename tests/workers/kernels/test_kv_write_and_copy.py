import pytest
import torch

from tests.workers.paged import paged_case
from workers.kernels.kv_write import kv_write, kv_write_ref
from workers.kernels.layout import PagedKVLayout, kv_views
from workers.kernels.page_copy import copy_blocks, copy_blocks_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kv_write_scatters_like_the_reference_and_skips_negative_slots(dtype: torch.dtype) -> None:
    a, b = paged_case([8], dtype=dtype, seed=6), paged_case([8], dtype=dtype, seed=6)
    gen = torch.Generator().manual_seed(6)
    key, value = torch.randn(5, 2, 16, generator=gen).to(dtype), torch.randn(5, 2, 16, generator=gen).to(dtype)
    total_slots = 24 * a.layout.blocks_per_page * a.layout.block_size
    slots = torch.tensor([0, 7, -1, total_slots - 1, 45])
    kv_write(key, value, a.k[:, 1], a.v[:, 1], slots)
    kv_write_ref(key, value, b.k[:, 1], b.v[:, 1], slots)
    torch.testing.assert_close(a.k, b.k, atol=0, rtol=0)
    torch.testing.assert_close(a.v, b.v, atol=0, rtol=0)
    bpp, bs = a.layout.blocks_per_page, a.layout.block_size
    page, slot = divmod(45 // bs, bpp)
    torch.testing.assert_close(a.k[page, 1, slot, 45 % bs], key[4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_block_copy_between_buffers_of_different_page_sizes(dtype: torch.dtype) -> None:
    src = paged_case([40], dtype=dtype, seed=7)
    host_layout = PagedKVLayout(2, 2, 16, 4, 2 * src.layout.page_bytes, dtype)
    dst = [kv_views(torch.zeros(6 * host_layout.page_bytes, dtype=torch.uint8), host_layout) for _ in range(2)]
    src_blocks = src.block_tables[0, :7]
    dst_blocks = torch.tensor([20, 0, 3, 9, 11, 1, 16])
    copy_blocks(src.k, dst[0][0], src_blocks, dst_blocks, chunk=64)
    copy_blocks_ref(src.k, src.v, dst[1][0], dst[1][1], src_blocks, dst_blocks)
    torch.testing.assert_close(dst[0][0], dst[1][0], atol=0, rtol=0)
    torch.testing.assert_close(dst[0][1], dst[1][1], atol=0, rtol=0)
    # And back: a round trip restores the original blocks exactly.
    back = paged_case([40], dtype=dtype, seed=8)
    copy_blocks(dst[0][0], back.k, dst_blocks, src_blocks, chunk=64)
    for s in src_blocks.tolist():
        page, slot = divmod(s, src.layout.blocks_per_page)
        torch.testing.assert_close(back.k[page, :, slot], src.k[page, :, slot], atol=0, rtol=0)
        torch.testing.assert_close(back.v[page, :, slot], src.v[page, :, slot], atol=0, rtol=0)


def test_layout_keeps_each_layers_blocks_dense_in_a_page() -> None:
    layout = PagedKVLayout(num_layers=3, num_kv_heads=2, head_dim=8, block_size=4, page_bytes=4096,
                           dtype=torch.float32)
    k, v = kv_views(torch.zeros(2 * 4096, dtype=torch.uint8), layout)
    assert layout.blocks_per_page == 4096 // (2 * 3 * 2 * 8 * 4 * 4)
    # Layer l of slot s+1 follows layer l of slot s directly: one layer's blocks form one dense segment.
    assert k.stride(2) == 2 * 4 * 2 * 8 and k.stride(1) == layout.blocks_per_page * k.stride(2)
    assert v.storage_offset() - k.storage_offset() == 4 * 2 * 8  # V right after the block's K
    assert k.stride(0) == 4096 // 4
