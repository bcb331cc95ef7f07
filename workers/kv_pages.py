"""One model's pages inside a `KVPool` (`ModelPages`), the pool's answer to a limit change (`LimitChange`), and the
small rules both use. `workers.kv_pool` re-exports `LimitChange` and `LimitStatus`.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.errors import InputError
from workers.kv_layout import KVLayout

if TYPE_CHECKING:
    from workers.kv_pool import KVPool

LimitStatus = Literal["applied", "deferred", "stale", "conflict"]


@dataclass(frozen=True, slots=True)
class LimitChange:
    """The pool's answer to `set_limit` (mirrors core.actions.ApplyResult's statuses)."""

    status: LimitStatus
    limit_pages: int | None  # the model's limit after the call (None: only the pool bounds it)
    revision: int  # the revision of the model's limit after the call
    message: str = ""


@dataclass(slots=True, eq=False)
class ModelPages:
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
    mirrors: tuple[KVPool, ...] = ()  # pools of the other ranks of a TP group: one page there per page here
    mirror_key: tuple[int, str] = (0, "")  # how the mirrors know this model

    @property
    def num_pages(self) -> int:
        return len(self.pages)

    @property
    def limit_pending(self) -> bool:
        return self.limit_pages is not None and len(self.pages) > self.limit_pages


def pages_needed(pages: ModelPages, num_blocks: int) -> int:
    """Pages a model must take for `num_blocks` more blocks (its partly used pages fill first)."""
    return -(-max(0, num_blocks - pages.num_free_slots) // pages.blocks_per_page)


def check_limit(limit_pages: int | None) -> None:
    if limit_pages is not None and limit_pages < 0:
        raise InputError("limit_pages", limit_pages, "a number of pages ≥ 0, or None for no limit")
