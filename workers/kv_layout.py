"""How a model's KV is laid out in a device's pages: `KVLayout` (bytes per token, block size, per-layer segments),
the block size that fills a page best (`fit_block_size`), and byte budgets in pages (`pages_for_bytes`).
`workers.kv_pool` re-exports them.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import InputError

DEFAULT_PAGE_BYTES = 2 * 1024 * 1024
DEFAULT_BLOCK_SIZE_TOKENS = 16


@dataclass(frozen=True, slots=True)
class KVLayout:
    """How one model stores KV on this device."""

    bytes_per_token: int  # K and V of one token on this GPU, all layers (per-rank share under TP)
    block_size_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS  # tokens per block, the unit block tables address
    num_layers: int = 1  # a page is laid out as this many per-layer segments

    def __post_init__(self) -> None:
        if self.bytes_per_token <= 0:
            raise InputError("bytes_per_token", self.bytes_per_token, "a positive number of bytes")
        if self.block_size_tokens <= 0:
            raise InputError("block_size_tokens", self.block_size_tokens, "a positive number of tokens")
        if self.num_layers <= 0 or self.bytes_per_token % self.num_layers:
            raise InputError("num_layers", self.num_layers, f"a positive divisor of bytes_per_token "
                             f"({self.bytes_per_token})")

    @property
    def block_bytes(self) -> int:
        return self.bytes_per_token * self.block_size_tokens

    @property
    def layer_block_bytes(self) -> int:
        """One block of one layer: the stride between blocks inside a layer segment."""
        return self.block_bytes // self.num_layers

    def blocks_per_page(self, page_bytes: int) -> int:
        return page_bytes // self.block_bytes

    def num_blocks(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size_tokens)

    def block_offset_bytes(self, page_bytes: int, page_id: int, slot: int, layer: int) -> int:
        """Byte offset of (block slot, layer) in a pool buffer of pages laid out back to back."""
        segment_bytes = self.blocks_per_page(page_bytes) * self.layer_block_bytes
        return page_id * page_bytes + layer * segment_bytes + slot * self.layer_block_bytes


def fit_block_size(bytes_per_token: int, page_bytes: int = DEFAULT_PAGE_BYTES,
                   max_block_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS) -> int:
    """The largest power-of-two block size (≤ `max_block_tokens`) that uses at least 90 % of what the best one
    uses of a page.

    Llama-3.1-8B (128 KiB/token) in 2 MiB pages gets 16 tokens per block, one block per page. Llama-3.1-70B at
    TP 4 (80 KiB/token) gets 8 (three blocks, 24 of the 25 tokens a page could hold) rather than 16 (one block, 16
    tokens) or 1 (25 tokens, but block tables 8× longer).
    """
    if bytes_per_token > page_bytes:
        raise InputError("page_bytes", page_bytes, f"at least one token of KV ({bytes_per_token} bytes); "
                         f"use larger pages or a higher TP degree")
    sizes = [1 << k for k in range(max(1, max_block_tokens).bit_length()) if 1 << k <= max_block_tokens]
    used = {size: (page_bytes // (bytes_per_token * size)) * size for size in sizes}
    best = max(used.values())
    return max(size for size in sizes if used[size] >= 0.9 * best)


def pages_for_bytes(num_bytes: float, page_bytes: int = DEFAULT_PAGE_BYTES) -> int:
    """Whole pages that fit in `num_bytes` (a memory budget in bytes → pages)."""
    return max(0, math.floor(num_bytes / page_bytes))


def limit_pages(limit_bytes: float, page_bytes: int = DEFAULT_PAGE_BYTES) -> int:
    """A model's KV limit in bytes → pages: whole pages, but at least one for a positive limit.

    Plans size KV in bytes without knowing a worker's page size. Rounding a positive limit below one page down to
    zero would leave the model unable to hold any request (all dropped as exceeding KV capacity); a limit caps the
    model's use of a shared pool rather than reserving it, so rounding up costs at most one page of headroom.
    """
    return 0 if limit_bytes <= 0 else max(1, pages_for_bytes(limit_bytes, page_bytes))
