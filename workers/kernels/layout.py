"""Where one model's KV lives inside the device's shared page buffer.

The buffer is `num_pages × page_bytes` raw bytes. A page belongs to one model at a time and is laid out as
`num_layers` contiguous per-layer segments; each segment holds the page's `blocks_per_page` blocks for that layer,
each block being its K then its V, `[2, block_size, kv_heads, head_dim]`:

    page p ─┬─ layer 0: block 0 [K | V], block 1 [K | V], … block bpp-1 [K | V]
            ├─ layer 1: …
            └─ layer L-1: …   (then unused tail bytes up to page_bytes)

so the blocks of one layer are dense within the page (Prism/kvcached measured 30–50 % slower attention when layers
interleave inside a page) and one (block, layer) is a single contiguous run of `2·block_size·kv_heads·head_dim`
elements, which is what swap and checkpoint copy. A block id `b` names page `b // blocks_per_page`, slot
`b % blocks_per_page`. Kernels receive every stride as an argument, so other layouts (a host checkpoint store, a
static per-model cache) are addressed by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PagedKVLayout:
    """The shape of one model's KV inside pages of `page_bytes`. All strides are in elements of `dtype`."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int  # tokens per block
    page_bytes: int
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.page_bytes % self.element_size:
            raise ValueError(f"page_bytes {self.page_bytes} is not a multiple of the element size")
        if self.page_bytes % (self.stride_kv * self.element_size):
            # The torch path addresses the buffer in rows of one block's K (or V) for one layer.
            raise ValueError(f"page_bytes {self.page_bytes} is not a multiple of one layer's K of a block "
                             f"({self.block_size} tokens × {self.num_kv_heads} heads × {self.head_dim} × "
                             f"{self.element_size} bytes)")
        if self.blocks_per_page < 1:
            raise ValueError(
                f"a page of {self.page_bytes} bytes cannot hold one block of {self.block_bytes} bytes"
                f" ({self.num_layers} layers × {self.block_size} tokens)"
            )

    @property
    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token over every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.element_size

    @property
    def block_bytes(self) -> int:
        return self.bytes_per_token * self.block_size

    @property
    def blocks_per_page(self) -> int:
        return self.page_bytes // self.block_bytes

    @property
    def stride_head(self) -> int:
        return self.head_dim

    @property
    def stride_token(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def stride_kv(self) -> int:
        """From a block's K to its V."""
        return self.block_size * self.stride_token

    @property
    def stride_slot(self) -> int:
        return 2 * self.stride_kv

    @property
    def stride_layer(self) -> int:
        return self.blocks_per_page * self.stride_slot

    @property
    def stride_page(self) -> int:
        return self.page_bytes // self.element_size

    @property
    def block_run_elems(self) -> int:
        """Elements of one (block, layer): its K and V, contiguous."""
        return self.stride_slot


def kv_views(buffer: torch.Tensor, layout: PagedKVLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V views of a byte buffer: each `[pages, layers, blocks_per_page, block_size, kv_heads, head_dim]`.

    `k[:, layer]` is the per-layer view kernels take (its data pointer already at the layer's segment).
    """
    if buffer.dtype != torch.uint8 or buffer.dim() != 1 or buffer.numel() % layout.page_bytes:
        raise ValueError("the KV buffer must be a flat uint8 tensor of whole pages")
    flat = buffer.view(layout.dtype)
    num_pages = buffer.numel() // layout.page_bytes
    size = (num_pages, layout.num_layers, layout.blocks_per_page, layout.block_size, layout.num_kv_heads,
            layout.head_dim)
    stride = (layout.stride_page, layout.stride_layer, layout.stride_slot, layout.stride_token, layout.stride_head, 1)
    k = torch.as_strided(flat, size, stride, 0)
    v = torch.as_strided(flat, size, stride, layout.stride_kv)
    return k, v


def slot_mapping(block_tables: torch.Tensor, seq_index: torch.Tensor, positions: torch.Tensor,
                 block_size: int) -> torch.Tensor:
    """Flat slot (`block_id · block_size + offset`) of each token, given its sequence row and position."""
    blocks = block_tables[seq_index, torch.div(positions, block_size, rounding_mode="floor")]
    return blocks * block_size + positions % block_size
