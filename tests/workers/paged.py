"""Factories for paged-KV test inputs: a page buffer filled with random K/V and scattered block tables."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.kernels.layout import PagedKVLayout, kv_views


@dataclass(frozen=True)
class PagedCase:
    layout: PagedKVLayout
    k: torch.Tensor  # [pages, layers, bpp, block, Hkv, D]
    v: torch.Tensor
    block_tables: torch.Tensor  # [B, max_blocks] int32, blocks drawn at random over all pages
    context_lens: torch.Tensor  # [B] int32


def paged_case(context_lens: list[int], *, num_kv_heads: int = 2, head_dim: int = 16, block_size: int = 4,
               num_layers: int = 2, page_bytes: int = 4096, num_pages: int = 24, dtype: torch.dtype = torch.float32,
               seed: int = 0) -> PagedCase:
    """A random cache whose sequences own blocks scattered over every page (ragged lengths, shuffled order)."""
    gen = torch.Generator().manual_seed(seed)
    layout = PagedKVLayout(num_layers, num_kv_heads, head_dim, block_size, page_bytes, dtype)
    buffer = torch.zeros(num_pages * page_bytes, dtype=torch.uint8)
    k, v = kv_views(buffer, layout)
    k.copy_(torch.randn(k.shape, generator=gen))
    v.copy_(torch.randn(v.shape, generator=gen))
    width = max(-(-n // block_size) for n in context_lens)
    total = num_pages * layout.blocks_per_page
    assert width * len(context_lens) <= total, "not enough blocks for these contexts"
    blocks = torch.randperm(total, generator=gen)[: width * len(context_lens)]
    return PagedCase(layout, k, v, blocks.view(len(context_lens), width).to(torch.int32),
                     torch.tensor(context_lens, dtype=torch.int32))


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float16: {"atol": 2e-3, "rtol": 2e-3},
            torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}[dtype]
