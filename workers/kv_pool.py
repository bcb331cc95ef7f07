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

The pool also accounts host memory for KV copied out of the device (swapped-out or checkpointed sequences;
`workers.kv_host`).

Tensor parallelism: a model sharded over several devices keeps its blocks in the pool of its group's first device
and names the pools of the others as *mirrors* (`add_model(..., mirrors=...)`). Each rank holds its shard of every
block, so every page the model takes here takes one page in each mirror too, and a page is taken only when every
mirror has one free; pages freed here free there. Mirrored pages count as used in the mirror's pool (they are not
addressed there: the simulator accounts them, it does not copy them), so the models resident on a mirror device and
the sharded model share its memory as they use it, like any two models sharing one pool.

Pure Python (no torch): the simulator and the real engine run this same code.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from core.errors import InputError
from workers.kv_host import HostKVAccounting
from workers.kv_layout import (
    DEFAULT_BLOCK_SIZE_TOKENS,
    DEFAULT_PAGE_BYTES,
    KVLayout,
    fit_block_size,
    limit_pages,
    pages_for_bytes,
)
from workers.kv_pages import LimitChange, LimitStatus, ModelPages, check_limit, pages_needed

__all__ = [
    "DEFAULT_BLOCK_SIZE_TOKENS", "DEFAULT_PAGE_BYTES", "KVLayout", "KVPool", "LimitChange", "LimitStatus",
    "fit_block_size", "limit_pages", "pages_for_bytes",
]

class KVPool(HostKVAccounting):
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
        self._models: dict[str, ModelPages] = {}
        self._tables: dict[int, list[int]] = {}  # seq id → block ids, in token order
        self._table_model: dict[int, str] = {}
        self._init_host(host_capacity_bytes)
        self._mirrored: dict[tuple[int, str], int] = {}  # (leader pool id, model) → pages held for it here
        self._num_mirrored = 0

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

    @property
    def num_mirrored_pages(self) -> int:
        """Pages used here by TP models whose blocks live in another device's pool (see the module docstring)."""
        return self._num_mirrored

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
    def add_model(self, model: str, layout: KVLayout, *, limit_pages: int | None = None, revision: int = 0,
                  mirrors: tuple[KVPool, ...] = ()) -> None:
        """Make `model` resident in the pool. Its blocks must fit a page (see `fit_block_size`). `mirrors`: the
        pools of the other devices of its TP group (see the module docstring), with pages of the same size."""
        if model in self._models:
            raise InputError("model", model, "a model not yet in this pool")
        bpp = layout.blocks_per_page(self.page_bytes)
        if bpp < 1:
            raise InputError("block_size_tokens", layout.block_size_tokens,
                             f"at most {self.page_bytes // layout.bytes_per_token} tokens, so that a block fits a "
                             f"{self.page_bytes}-byte page")
        check_limit(limit_pages)
        for mirror in mirrors:
            if mirror is self or mirror.page_bytes != self.page_bytes:
                raise InputError("mirrors", mirror.page_bytes, f"pools of other devices with {self.page_bytes}-byte "
                                 "pages")
        key = (id(self), model)
        for mirror in mirrors:
            mirror._mirrored[key] = 0
        self._models[model] = ModelPages(layout, bpp, limit_pages, revision, partial=[{} for _ in range(bpp)],
                                          mirrors=tuple(mirrors), mirror_key=key)

    def remove_model(self, model: str) -> None:
        """Forget a model that holds no blocks (its sequences must be freed first)."""
        pages = self._state(model)
        if pages.num_blocks_used:
            raise RuntimeError(f"model {model!r} still holds {pages.num_blocks_used} KV blocks")
        for mirror in pages.mirrors:
            del mirror._mirrored[pages.mirror_key]
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
        check_limit(limit_pages)
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
        """Could the model take `num_blocks` more blocks now, leaving `reserve_pages` pages free in the pool (and in
        each of its mirrors)?"""
        if num_blocks <= 0:
            return True
        pages = self._state(model)
        new_pages = pages_needed(pages, num_blocks)
        if new_pages == 0:
            return True
        if pages.limit_pages is not None and pages.num_pages + new_pages > pages.limit_pages:
            return False
        if new_pages + reserve_pages > self.num_free_pages:
            return False
        return not pages.mirrors or all(new_pages + reserve_pages <= m.num_free_pages for m in pages.mirrors)

    def can_allocate_all(self, blocks: Mapping[str, int]) -> bool:
        """Could each model take its `blocks[model]` more blocks at the same time (limits, pool and mirrors)?"""
        total = 0
        mirrored: dict[int, tuple[KVPool, int]] = {}
        for model, num_blocks in blocks.items():
            pages = self._state(model)
            new_pages = pages_needed(pages, num_blocks)
            if pages.limit_pages is not None and pages.num_pages + new_pages > pages.limit_pages:
                return False
            total += new_pages
            for m in pages.mirrors:
                mirrored[id(m)] = (m, mirrored.get(id(m), (m, 0))[1] + new_pages)
        return total <= self.num_free_pages and all(n <= m.num_free_pages for m, n in mirrored.values())

    def max_pages(self, model: str) -> int:
        """The most pages the model could ever hold: the pool's (and its mirrors') capacity, under its limit."""
        pages = self._state(model)
        most = min([self._num_pages, *(m.num_pages for m in pages.mirrors)]) if pages.mirrors else self._num_pages
        return most if pages.limit_pages is None else min(most, pages.limit_pages)

    def mirrors_short(self, model: str, num_blocks: int = 1, *, reserve_pages: int = 0) -> bool:
        """Some mirror of the model lacks the pages `num_blocks` more blocks would take: only the model's own
        blocks can free pages there (a preemption victim must be of this model)."""
        pages = self._state(model)
        if not pages.mirrors:
            return False
        new_pages = pages_needed(pages, num_blocks)
        return any(new_pages + reserve_pages > m.num_free_pages for m in pages.mirrors)

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

    def _take_block(self, pages: ModelPages) -> int:
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
        for mirror in pages.mirrors:
            mirror._hold_mirror(pages.mirror_key, 1)
        slots = list(range(bpp - 1, -1, -1))  # pop() hands out slot 0 first
        slot = slots.pop()
        pages.pages[page_id] = slots
        pages.num_free_slots += bpp - 1
        if bpp > 1:
            pages.partial[bpp - 1][page_id] = None
        return page_id * bpp + slot

    def _release_block(self, pages: ModelPages, block: int) -> None:
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
            for mirror in pages.mirrors:
                mirror._hold_mirror(pages.mirror_key, -1)
            pages.num_free_slots -= k
        else:
            pages.partial[k + 1][page_id] = None
            pages.num_free_slots += 1

    def _hold_mirror(self, key: tuple[int, str], delta: int) -> None:
        self._mirrored[key] += delta
        self._num_mirrored += delta
        self._num_used += delta

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
            for mirror in pages.mirrors:
                assert mirror._mirrored[pages.mirror_key] == pages.num_pages, f"{name}: mirror out of step"
        assert self._num_mirrored == sum(self._mirrored.values()) >= 0
        assert len(owners) + self._num_mirrored == self._num_used <= self._num_pages, (
            f"{self._num_used} pages used of {self._num_pages}")
        assert not owners.keys() & set(self._free_ids), "a page is both free and owned"
        assert 0 <= self._host_bytes_used <= self.host_capacity_bytes

    def _state(self, model: str) -> ModelPages:
        try:
            return self._models[model]
        except KeyError:
            raise InputError("model", model, f"a model resident in this pool: {', '.join(self._models) or 'none'}") from None


_EMPTY: list[int] = []
