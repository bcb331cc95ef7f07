"""Workload records: one `Request`, and `RequestTable`, a column store of many.

Traces hold up to millions of requests, so they live as numpy columns, never as lists of objects. Models and SLO
classes are dictionary-encoded: `model_idx[i]` indexes `model_names`, `slo_idx[i]` indexes `slo_names`.
`output_tokens` is known to the simulator and hidden from planners (they see predictions).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

# A workload is materialised as columns (about 30 bytes a request; 14 days of ServeGen m-large as 162 models are
# 237 million requests in 6.6 GiB, docs/workloads.md), and synthesis or rate scaling holds working copies besides.
# One that would not fit comes from a typo (a rate or a factor off by orders of magnitude) and is refused before
# its columns are allocated, not after the machine runs out of memory (`max_requests`).
MAX_REQUESTS = 1_000_000_000
BYTES_PER_REQUEST = 64  # columns and working copies, per request, at the peak of synthesis or scaling
MAX_TOKENS = int(np.iinfo(np.int32).max)  # token counts are stored as int32


def max_requests() -> int:
    """The most requests one workload may hold on this machine: MAX_REQUESTS, or fewer where the machine's memory
    would not hold them at BYTES_PER_REQUEST."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such names
        return MAX_REQUESTS
    return int(min(MAX_REQUESTS, memory // BYTES_PER_REQUEST))


@dataclass(frozen=True, slots=True)
class Request:
    """One LLM request."""

    request_id: int
    arrival_s: float  # seconds since the start of the trace (or the wall epoch on a live fleet)
    model: str  # served model name (FleetSpec.models)
    slo_class: str  # SLO class name (FleetSpec.slo_classes)
    prompt_tokens: int
    output_tokens: int  # true output length: known to the simulator and to replay, hidden from planners
    prompt_text: str | None = None  # optional; real workers tokenize it, length models may read it
    prompt_token_ids: tuple[int, ...] | None = None  # optional token ids for real workers


@dataclass(frozen=True, eq=False)
class RequestTable:
    """Requests as columns, sorted by arrival. Build with `RequestTable.from_columns`; never mutated."""

    arrival_s: np.ndarray  # float64, non-decreasing
    model_idx: np.ndarray  # int32 into model_names
    slo_idx: np.ndarray  # int16 into slo_names
    prompt_tokens: np.ndarray  # int32, ≥ 1
    output_tokens: np.ndarray  # int32, ≥ 1
    model_names: tuple[str, ...]
    slo_names: tuple[str, ...]
    request_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64, unique
    prompt_text: tuple[str | None, ...] | None = None  # only when the source carried text

    @classmethod
    def from_columns(
        cls,
        *,
        arrival_s: Sequence[float] | np.ndarray,
        model_idx: Sequence[int] | np.ndarray,
        slo_idx: Sequence[int] | np.ndarray,
        prompt_tokens: Sequence[int] | np.ndarray,
        output_tokens: Sequence[int] | np.ndarray,
        model_names: Sequence[str],
        slo_names: Sequence[str],
        request_id: Sequence[int] | np.ndarray | None = None,
        prompt_text: Sequence[str | None] | None = None,
        sort: bool = True,
    ) -> RequestTable:
        """Make a table; sorts by arrival (stable) unless `sort=False` and the input is already sorted."""
        arrival = np.asarray(arrival_s, dtype=np.float64)
        n = arrival.shape[0]
        ids = np.arange(n, dtype=np.int64) if request_id is None else np.asarray(request_id, dtype=np.int64)
        cols = {
            "model_idx": np.asarray(model_idx, dtype=np.int32),
            "slo_idx": np.asarray(slo_idx, dtype=np.int16),
            "prompt_tokens": np.asarray(prompt_tokens, dtype=np.int32),
            "output_tokens": np.asarray(output_tokens, dtype=np.int32),
            "request_id": ids,
        }
        for name, col in cols.items():
            if col.shape != (n,):
                raise ValueError(f"column {name} has shape {col.shape}, expected ({n},)")
        texts = tuple(prompt_text) if prompt_text is not None else None
        if sort and n and np.any(np.diff(arrival) < 0):
            order = np.argsort(arrival, kind="stable")
            arrival = arrival[order]
            cols = {k: v[order] for k, v in cols.items()}
            texts = tuple(texts[i] for i in order) if texts is not None else None
        elif n and np.any(np.diff(arrival) < 0):
            raise ValueError("arrival_s must be non-decreasing when sort=False")
        return cls(arrival, model_names=tuple(model_names), slo_names=tuple(slo_names), prompt_text=texts, **cols)

    @classmethod
    def empty(cls, model_names: Sequence[str] = (), slo_names: Sequence[str] = ()) -> RequestTable:
        return cls.from_columns(
            arrival_s=[], model_idx=[], slo_idx=[], prompt_tokens=[], output_tokens=[],
            model_names=model_names, slo_names=slo_names,
        )

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    @property
    def start_s(self) -> float:
        return float(self.arrival_s[0]) if len(self) else 0.0

    def model_of(self, i: int) -> str:
        return self.model_names[int(self.model_idx[i])]

    def request(self, i: int) -> Request:
        """Materialise row `i` (for handing one request to a worker; never for bulk work)."""
        return Request(
            request_id=int(self.request_id[i]),
            arrival_s=float(self.arrival_s[i]),
            model=self.model_names[int(self.model_idx[i])],
            slo_class=self.slo_names[int(self.slo_idx[i])],
            prompt_tokens=int(self.prompt_tokens[i]),
            output_tokens=int(self.output_tokens[i]),
            prompt_text=self.prompt_text[i] if self.prompt_text is not None else None,
        )

    def __iter__(self) -> Iterator[Request]:
        return (self.request(i) for i in range(len(self)))

    def take(self, index: np.ndarray) -> RequestTable:
        """Rows selected by a boolean mask or sorted integer index, same dictionaries."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        texts = tuple(self.prompt_text[i] for i in idx) if self.prompt_text is not None else None
        return RequestTable(
            arrival_s=self.arrival_s[idx], model_idx=self.model_idx[idx], slo_idx=self.slo_idx[idx],
            prompt_tokens=self.prompt_tokens[idx], output_tokens=self.output_tokens[idx],
            model_names=self.model_names, slo_names=self.slo_names, request_id=self.request_id[idx],
            prompt_text=texts,
        )

    def with_arrivals(self, arrival_s: np.ndarray) -> RequestTable:
        """Same requests at new arrival times (re-sorted)."""
        return RequestTable.from_columns(
            arrival_s=arrival_s, model_idx=self.model_idx, slo_idx=self.slo_idx,
            prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens, model_names=self.model_names,
            slo_names=self.slo_names, request_id=self.request_id, prompt_text=self.prompt_text,
        )

    def with_labels(
        self,
        *,
        model_idx: np.ndarray | None = None,
        model_names: Sequence[str] | None = None,
        slo_idx: np.ndarray | None = None,
        slo_names: Sequence[str] | None = None,
    ) -> RequestTable:
        """Same requests relabelled with other models and/or SLO classes (arrival order unchanged)."""
        return RequestTable(
            arrival_s=self.arrival_s,
            model_idx=self.model_idx if model_idx is None else np.asarray(model_idx, np.int32),
            slo_idx=self.slo_idx if slo_idx is None else np.asarray(slo_idx, np.int16),
            prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
            model_names=self.model_names if model_names is None else tuple(model_names),
            slo_names=self.slo_names if slo_names is None else tuple(slo_names),
            request_id=self.request_id, prompt_text=self.prompt_text,
        )

    def for_model(self, name: str) -> RequestTable:
        return self.take(self.model_idx == self.model_names.index(name))

    def between(self, start_s: float, end_s: float) -> RequestTable:
        """Requests with start_s ≤ arrival < end_s (binary search on the sorted arrivals)."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        return self.take(np.arange(lo, hi))

    @staticmethod
    def concat(tables: Sequence[RequestTable]) -> RequestTable:
        """Merge tables (dictionaries unioned in order of first appearance; ids renumbered if they clash)."""
        models: list[str] = []
        classes: list[str] = []
        for t in tables:
            models += [m for m in t.model_names if m not in models]
            classes += [c for c in t.slo_names if c not in classes]
        m_pos = {m: i for i, m in enumerate(models)}
        c_pos = {c: i for i, c in enumerate(classes)}
        remap = lambda col, names, pos: np.asarray([pos[n] for n in names], np.int64)[col] if len(col) else col
        ids = np.concatenate([t.request_id for t in tables]) if tables else np.zeros(0, np.int64)
        if len(np.unique(ids)) != len(ids):
            ids = np.arange(len(ids), dtype=np.int64)
        has_text = tables and all(t.prompt_text is not None for t in tables)
        return RequestTable.from_columns(
            arrival_s=np.concatenate([t.arrival_s for t in tables]) if tables else [],
            model_idx=np.concatenate([remap(t.model_idx, t.model_names, m_pos) for t in tables]) if tables else [],
            slo_idx=np.concatenate([remap(t.slo_idx, t.slo_names, c_pos) for t in tables]) if tables else [],
            prompt_tokens=np.concatenate([t.prompt_tokens for t in tables]) if tables else [],
            output_tokens=np.concatenate([t.output_tokens for t in tables]) if tables else [],
            model_names=models, slo_names=classes, request_id=ids,
            prompt_text=[x for t in tables for x in t.prompt_text] if has_text else None,  # type: ignore[union-attr]
        )
