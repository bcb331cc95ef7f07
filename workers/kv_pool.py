"""One KV page pool per device, shared by every resident model (the kvcached / Prism design).

The device's KV memory is cut into fixed-size physical *pages* (2 MiB by default). A model takes pages on demand
and gives a page back to the pool as soon as none of its blocks is in use, so memory flows between the models that
time-share the GPU. A page only ever holds blocks of one model. Inside a page, a model's *blocks*
(`block_size_tokens` tokens each) are laid out per layer: the page is `num_layers` contiguous segments, each holding
that page's blocks for one layer, so every layer's blocks are dense (kvcached measured 30–56 % slower attention when
layers interleave inside a page; see REFERENCES.md).

Block ids are `page_id * blocks_per_page + slot`, so `locate()` is a `divmod` and the engine computes tensor offsets
with `KVLayout.block_offset_bytes()`. Block tables are kept here, per sequence id (ids are unique per device).

Per-model page limits carry a revision (see core.actions): a lower revision is `stale`, the same revision with
another limit a `conflict`; a shrink below the pages in use is `deferred` — new pages are refused at once and the
change completes as pages free. Allocation is page-aware: a model fills its fullest partly-used page before taking
a new one, and an empty page goes back at once, so scattered blocks do not pin pages (the trap Prism reports).

The pool also accounts host memory for KV copied out of the device (swapped-out or checkpointed sequences).

Pure Python (no torch): the simulator and the real engine run this same code.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal

from core.errors import InputError

DEFAULT_PAGE_BYTES = 2 * 1024 * 1024
DEFAULT_BLOCK_SIZE_TOKENS = 16

LimitStatus = Literal["applied", "deferred", "stale", "conflict"]


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


@dataclass(frozen=True, slots=True)
class LimitChange:
    """The pool's answer to `set_limit` (mirrors core.actions.ApplyResult's statuses)."""

    status: LimitStatus
    limit_pages: int | None  # the model's limit after the call (None: only the pool bounds it)
    revision: int  # the revision of the model's limit after the call
    message: str = ""


@dataclass(slots=True, eq=False)
class _ModelPages:
    """One model's pages in the pool. `partial[k]` holds the owned pages with exactly k free slots (insertion
    ordered, so allocation is deterministic); full pages are in no bucket."""

    layout: KVLayout
    blocks_per_page: int
    limit_pages: int | None
    revision: int
    pages: dict[int, list[int]] = field(default_factory=dict)  # page id → free slots of the page (a stack)
    partial: list[dict[int, None]] = field(default_factory=list)
    num_blocks_used: int = 0
    num_free_slots: int = 0  # free slots over the owned pages (kept in step with `pages`)

    @property
    def num_pages(self) -> int:
        return len(self.pages)

    @property
    def limit_pending(self) -> bool:
        return self.limit_pages is not None and len(self.pages) > self.limit_pages



class KVPool:
    """The KV pages of one device, shared by its resident models; block tables per sequence; host KV accounting.

    Invariants (checked by tests): pages in use never exceed `num_pages`; a page belongs to at most one model; a
    model takes no new page while at or above its limit; a page with no block in use is back in the pool.
    """

    def __init__(self, num_pages: int, *, page_bytes: int = DEFAULT_PAGE_BYTES, host_capacity_bytes: int = 0) -> None:
        """`num_pages`: pages the device may hold now (weights and KV share memory, see `set_num_pages`)."""
        if num_pages < 0:
            raise InputError("num_pages", num_pages, "a number of pages ≥ 0")
        if page_bytes <= 0:
            raise InputError("page_bytes", page_bytes, "a positive number of bytes")
        if host_capacity_bytes < 0:
            raise InputError("host_capacity_bytes", host_capacity_bytes, "a number of bytes ≥ 0")
        self.page_bytes = page_bytes
        self._num_pages = num_pages
        self._num_ids = num_pages  # page ids handed out so far lie in [0, _num_ids)
        self._free_ids: list[int] = list(range(num_pages))  # a heap: low ids first, so the tail stays free
        self._num_used = 0
        self._models: dict[str, _ModelPages] = {}
        self._tables: dict[int, list[int]] = {}  # seq id → block ids, in token order
        self._table_model: dict[int, str] = {}
        self.host_capacity_bytes = host_capacity_bytes
        self._host: dict[int, tuple[str, int]] = {}  # seq id → (model, KV tokens held in host memory)
        self._host_bytes_used = 0

    # -- capacity ----------------------------------------------------------------------------------------------
    @property
    def num_pages(self) -> int:
        return self._num_pages

    @property
    def num_used_pages(self) -> int:
        return self._num_used

    @property
    def num_free_pages(self) -> int:
        return self._num_pages - self._num_used

    @property
    def used_bytes(self) -> int:
        return self._num_used * self.page_bytes

    def set_num_pages(self, num_pages: int) -> bool:
        """Change how many pages the device may hold (weights loaded or unloaded next to the pool).

        Growing always succeeds. Shrinking succeeds only if the pages in use fit (returns False otherwise and
        changes nothing): capacity is a count, like physical pages mapped behind kvcached's virtual ids.
        """
        if num_pages < self._num_used:
            return False
        for page_id in range(self._num_ids, num_pages):
            heapq.heappush(self._free_ids, page_id)
        self._num_ids = max(self._num_ids, num_pages)
        self._num_pages = num_pages
        return True

    # -- models ------------------------------------------------------------------------------------------------
    def add_model(self, model: str, layout: KVLayout, *, limit_pages: int | None = None, revision: int = 0) -> None:
        """Make `model` resident in the pool. Its blocks must fit a page (see `fit_block_size`)."""
        if model in self._models:
            raise InputError("model", model, "a model not yet in this pool")
        bpp = layout.blocks_per_page(self.page_bytes)
        if bpp < 1:
            raise InputError("block_size_tokens", layout.block_size_tokens,
                             f"at most {self.page_bytes // layout.bytes_per_token} tokens, so that a block fits a "
                             f"{self.page_bytes}-byte page")
        _check_limit(limit_pages)
        self._models[model] = _ModelPages(layout, bpp, limit_pages, revision, partial=[{} for _ in range(bpp)])

    def remove_model(self, model: str) -> None:
        """Forget a model that holds no blocks (its sequences must be freed first)."""
        pages = self._state(model)
        if pages.num_blocks_used:
            raise RuntimeError(f"model {model!r} still holds {pages.num_blocks_used} KV blocks")
        del self._models[model]

    def has_model(self, model: str) -> bool:
        return model in self._models

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._models)

    def layout(self, model: str) -> KVLayout:
        return self._state(model).layout

    def blocks_per_page(self, model: str) -> int:
        return self._state(model).blocks_per_page

    def pages_used(self, model: str) -> int:
        return self._state(model).num_pages

    def blocks_used(self, model: str) -> int:
        return self._state(model).num_blocks_used

    def page_ids(self, model: str) -> tuple[int, ...]:
        """The pages the model owns now (sorted)."""
        return tuple(sorted(self._state(model).pages))

    # -- limits ------------------------------------------------------------------------------------------------
    def limit_pages(self, model: str) -> int | None:
        return self._state(model).limit_pages

    def limit_revision(self, model: str) -> int:
        return self._state(model).revision

    def limit_pending(self, model: str) -> bool:
        """A shrink is deferred: the model holds more pages than its limit and takes no new ones."""
        return self._state(model).limit_pending

    def set_limit(self, model: str, limit_pages: int | None, revision: int) -> LimitChange:
        """Set a model's page limit under the revision contract of core.actions (see the module docstring)."""
        _check_limit(limit_pages)
        pages = self._state(model)
        if revision < pages.revision:
            return LimitChange("stale", pages.limit_pages, pages.revision,
                               f"revision {revision} < current {pages.revision}")
        if revision == pages.revision and limit_pages != pages.limit_pages:
            return LimitChange("conflict", pages.limit_pages, pages.revision,
                               f"revision {revision} already set the limit to {pages.limit_pages} pages")
        pages.limit_pages, pages.revision = limit_pages, revision
        if pages.limit_pending:
            return LimitChange("deferred", limit_pages, revision,
                               f"{pages.num_pages} pages in use; completes as they free")
        return LimitChange("applied", limit_pages, revision)

    # -- blocks ------------------------------------------------------------------------------------------------
    def block_table(self, seq_id: int) -> list[int]:
        """The sequence's block ids in token order (empty if it holds none). The list is the pool's own: read only."""
        return self._tables.get(seq_id, _EMPTY)

    def num_new_blocks(self, model: str, seq_id: int, num_tokens: int) -> int:
        """Blocks to add so the sequence's table covers `num_tokens` tokens."""
        pages = self._state(model)
        return max(0, pages.layout.num_blocks(num_tokens) - len(self._tables.get(seq_id, _EMPTY)))

    def can_allocate(self, model: str, num_blocks: int, *, reserve_pages: int = 0) -> bool:
        """Could the model take `num_blocks` more blocks now, leaving `reserve_pages` pages free in the pool?"""
        if num_blocks <= 0:
            return True
        pages = self._state(model)
        new_pages = -(-max(0, num_blocks - pages.num_free_slots) // pages.blocks_per_page)
        if new_pages == 0:
            return True
        if pages.limit_pages is not None and pages.num_pages + new_pages > pages.limit_pages:
            return False
        return new_pages + reserve_pages <= self.num_free_pages

    def allocate(self, model: str, seq_id: int, num_tokens: int, *, reserve_pages: int = 0) -> bool:
        """Grow the sequence's block table to cover `num_tokens` tokens. All or nothing: False changes nothing."""
        need = self.num_new_blocks(model, seq_id, num_tokens)
        if need == 0:
            return True
        if not self.can_allocate(model, need, reserve_pages=reserve_pages):
            return False
        pages = self._models[model]
        table = self._tables.get(seq_id)
        if table is None:
            table = self._tables[seq_id] = []
            self._table_model[seq_id] = model
        elif self._table_model[seq_id] != model:
            raise RuntimeError(f"sequence {seq_id} holds blocks of {self._table_model[seq_id]!r}, not {model!r}")
        for _ in range(need):
            table.append(self._take_block(pages))
        pages.num_blocks_used += need
        return True

    def free(self, seq_id: int) -> int:
        """Release every block of the sequence; empty pages return to the pool. Returns the blocks freed."""
        table = self._tables.pop(seq_id, None)
        if not table:
            self._table_model.pop(seq_id, None)
            return 0
        pages = self._models[self._table_model.pop(seq_id)]
        for block in reversed(table):
            self._release_block(pages, block)
        pages.num_blocks_used -= len(table)
        return len(table)

    def trim(self, seq_id: int, num_tokens: int) -> int:
        """Release the sequence's blocks beyond those holding `num_tokens` tokens. Returns the blocks freed."""
        table = self._tables.get(seq_id)
        if not table:
            return 0
        pages = self._models[self._table_model[seq_id]]
        keep = pages.layout.num_blocks(num_tokens)
        extra = len(table) - keep
        for _ in range(max(0, extra)):
            self._release_block(pages, table.pop())
        if extra > 0:
            pages.num_blocks_used -= extra
            return extra
        return 0

    def locate(self, model: str, block_id: int) -> tuple[int, int]:
        """Block id → (page id, slot in page)."""
        return divmod(block_id, self._state(model).blocks_per_page)

    def _take_block(self, pages: _ModelPages) -> int:
        bpp = pages.blocks_per_page
        for k in range(1, bpp):  # fullest partly-used page first (fewest free slots)
            bucket = pages.partial[k]
            if bucket:
                page_id = next(iter(bucket))
                del bucket[page_id]
                if k > 1:
                    pages.partial[k - 1][page_id] = None
                pages.num_free_slots -= 1
                return page_id * bpp + pages.pages[page_id].pop()
        page_id = heapq.heappop(self._free_ids)
        self._num_used += 1
        slots = list(range(bpp - 1, -1, -1))  # pop() hands out slot 0 first
        slot = slots.pop()
        pages.pages[page_id] = slots
        pages.num_free_slots += bpp - 1
        if bpp > 1:
            pages.partial[bpp - 1][page_id] = None
        return page_id * bpp + slot

    def _release_block(self, pages: _ModelPages, block: int) -> None:
        bpp = pages.blocks_per_page
        page_id, slot = divmod(block, bpp)
        slots = pages.pages[page_id]
        k = len(slots)
        if k:
            del pages.partial[k][page_id]
        slots.append(slot)
        if k + 1 == bpp:
            del pages.pages[page_id]
            heapq.heappush(self._free_ids, page_id)
            self._num_used -= 1
            pages.num_free_slots -= k
        else:
            pages.partial[k + 1][page_id] = None
            pages.num_free_slots += 1

    # -- host memory -------------------------------------------------------------------------------------------
    @property
    def host_bytes_used(self) -> int:
        return self._host_bytes_used

    @property
    def host_pages_used(self) -> int:
        """Host KV in units of device pages (what WorkerStatus reports)."""
        return -(-self._host_bytes_used // self.page_bytes)

    def host_tokens(self, seq_id: int) -> int:
        """KV tokens of the sequence held in host memory (swapped out or checkpointed)."""
        entry = self._host.get(seq_id)
        return entry[1] if entry else 0

    def can_store_host(self, model: str, seq_id: int, num_tokens: int) -> bool:
        """Could the sequence's host copy grow (or shrink) to `num_tokens` tokens?"""
        return self._host_bytes_used + self._host_delta(model, seq_id, num_tokens) <= self.host_capacity_bytes

    def store_host(self, model: str, seq_id: int, num_tokens: int) -> bool:
        """Set the sequence's host copy to `num_tokens` tokens. False (nothing changed) when host memory is full."""
        delta = self._host_delta(model, seq_id, num_tokens)
        if delta > 0 and self._host_bytes_used + delta > self.host_capacity_bytes:
            return False
        self._host_bytes_used += delta
        self._host[seq_id] = (model, num_tokens)
        return True

    def _host_delta(self, model: str, seq_id: int, num_tokens: int) -> int:
        """Bytes the host copy grows by (host copies are held in whole blocks)."""
        layout = self._state(model).layout
        bs = layout.block_size_tokens
        old = self._host.get(seq_id)
        old_blocks = -(-old[1] // bs) if old else 0
        new_blocks = -(-num_tokens // bs)
        return (new_blocks - old_blocks) * layout.block_bytes if new_blocks != old_blocks else 0

    def drop_host(self, seq_id: int) -> None:
        """Forget the sequence's host copy."""
        entry = self._host.pop(seq_id, None)
        if entry:
            self._host_bytes_used -= self._host_bytes(*entry)

    def _host_bytes(self, model: str, num_tokens: int) -> int:
        layout = self._state(model).layout
        return layout.num_blocks(num_tokens) * layout.block_bytes

    # -- checks ------------------------------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Raise AssertionError if the pool's bookkeeping is inconsistent (tests and simulations call this)."""
        owners: dict[int, str] = {}
        for name, pages in self._models.items():
            for page_id, slots in pages.pages.items():
                assert page_id not in owners, f"page {page_id} owned by {owners.get(page_id)} and {name}"
                assert len(slots) < pages.blocks_per_page, f"empty page {page_id} still held by {name}"
                owners[page_id] = name
            in_tables = sum(len(t) for s, t in self._tables.items() if self._table_model[s] == name)
            assert in_tables == pages.num_blocks_used, f"{name}: tables hold {in_tables}, counted {pages.num_blocks_used}"
            free_slots = sum(len(slots) for slots in pages.pages.values())
            assert free_slots == pages.num_free_slots, f"{name}: {free_slots} free slots, counted {pages.num_free_slots}"
            assert pages.num_blocks_used == pages.num_pages * pages.blocks_per_page - free_slots
        assert len(owners) == self._num_used <= self._num_pages, f"{self._num_used} pages used of {self._num_pages}"
        assert not owners.keys() & set(self._free_ids), "a page is both free and owned"
        assert 0 <= self._host_bytes_used <= self.host_capacity_bytes

    def _state(self, model: str) -> _ModelPages:
        try:
            return self._models[model]
        except KeyError:
            raise InputError("model", model, f"a model resident in this pool: {', '.join(self._models) or 'none'}") from None


_EMPTY: list[int] = []


def _check_limit(limit_pages: int | None) -> None:
    if limit_pages is not None and limit_pages < 0:
        raise InputError("limit_pages", limit_pages, "a number of pages ≥ 0, or None for no limit")


def pages_for_bytes(num_bytes: float, page_bytes: int = DEFAULT_PAGE_BYTES) -> int:
    """Whole pages that fit in `num_bytes` (a KV limit in bytes → pages)."""
    return max(0, math.floor(num_bytes / page_bytes))
