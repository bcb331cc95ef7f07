"""Request telemetry: what happened to each request, in bulk.

Telemetry arrives as numpy columns — a `core.requests.RequestTable` (what was asked) and, row-aligned with it,
`RequestOutcomes` (what happened) — and is written by `ingest_requests` through the driver's fast path: one
`executemany` per chunk on SQLite, `COPY … FROM STDIN` on PostgreSQL. Rows are checked before anything is written,
so a bad batch writes nothing. Reads come back as columns too (`read_telemetry`, `request_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from core.errors import InputError
from core.requests import RequestTable
from db.fleets import get_fleet
from db.models import REQUEST_OUTCOMES, RequestTelemetryRow

NO_LABEL = -1  # code of a missing label (no drop reason, no worker …)
LATENCY_COLUMNS = ("ttft_s", "tpot_s", "e2e_s", "finish_s")
LABEL_COLUMNS = ("drop_reason", "worker_id", "replica_id")


@dataclass(frozen=True, eq=False)
class RequestOutcomes:
    """What happened to each request, row-aligned with a `RequestTable`.

    Latencies are float64 seconds with NaN where unknown (a dropped request has no TPOT). Labels are
    dictionary-encoded like `RequestTable`'s: `outcome_idx` indexes `REQUEST_OUTCOMES`; `drop_reason_idx`,
    `worker_idx` and `replica_idx` index their name tuples, with -1 for none. Build with `from_columns`.
    """

    ttft_s: np.ndarray  # float64, time to first token
    tpot_s: np.ndarray  # float64, mean time per output token after the first
    e2e_s: np.ndarray  # float64, arrival to last token
    finish_s: np.ndarray  # float64, clock time of the last token or of the drop
    outcome_idx: np.ndarray  # int8 into REQUEST_OUTCOMES
    drop_reason_idx: np.ndarray  # int32 into drop_reasons, -1: none
    worker_idx: np.ndarray  # int32 into worker_ids, -1: none
    replica_idx: np.ndarray  # int32 into replica_ids, -1: none
    drop_reasons: tuple[str, ...] = ()
    worker_ids: tuple[str, ...] = ()
    replica_ids: tuple[str, ...] = ()

    @classmethod
    def from_columns(
        cls,
        *,
        outcome: Sequence[str] | np.ndarray,
        ttft_s: Sequence[float] | np.ndarray | None = None,
        tpot_s: Sequence[float] | np.ndarray | None = None,
        e2e_s: Sequence[float] | np.ndarray | None = None,
        finish_s: Sequence[float] | np.ndarray | None = None,
        drop_reason: Sequence[str | None] | None = None,
        worker_id: Sequence[str | None] | None = None,
        replica_id: Sequence[str | None] | None = None,
    ) -> RequestOutcomes:
        """Columns of plain values (None or NaN where unknown); labels are encoded here. Unknown outcomes are an
        `InputError` naming the value and the allowed ones."""
        n = len(outcome)
        codes = {name: i for i, name in enumerate(REQUEST_OUTCOMES)}
        bad = next((o for o in outcome if o not in codes), None)
        if bad is not None:
            raise InputError("outcome", bad, f"one of {', '.join(REQUEST_OUTCOMES)}")
        floats = {
            name: _float_column(name, col, n)
            for name, col in zip(LATENCY_COLUMNS, (ttft_s, tpot_s, e2e_s, finish_s), strict=True)
        }
        label_columns = (drop_reason, worker_id, replica_id)
        labels = {name: _encode(name, col, n) for name, col in zip(LABEL_COLUMNS, label_columns, strict=True)}
        return cls(
            **floats,
            outcome_idx=np.fromiter((codes[o] for o in outcome), np.int8, n),
            drop_reason_idx=labels["drop_reason"][0], drop_reasons=labels["drop_reason"][1],
            worker_idx=labels["worker_id"][0], worker_ids=labels["worker_id"][1],
            replica_idx=labels["replica_id"][0], replica_ids=labels["replica_id"][1],
        )

    def __len__(self) -> int:
        return int(self.outcome_idx.shape[0])

    def take(self, index: np.ndarray) -> RequestOutcomes:
        """Rows selected by a boolean mask or an integer index (as `RequestTable.take`), same dictionaries."""
        columns = {k: v[index] for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        names = {k: v for k, v in vars(self).items() if isinstance(v, tuple)}
        return RequestOutcomes(**columns, **names)

    def labels(self, column: str, rows: slice = slice(None)) -> np.ndarray:
        """Decoded label column (`outcome`, `drop_reason`, `worker_id`, `replica_id`) over `rows`, as an object
        array with None where there is no label."""
        if column == "outcome":
            return np.asarray(REQUEST_OUTCOMES, dtype=object)[self.outcome_idx[rows]]
        idx, names = {
            "drop_reason": (self.drop_reason_idx, self.drop_reasons),
            "worker_id": (self.worker_idx, self.worker_ids),
            "replica_id": (self.replica_idx, self.replica_ids),
        }[column]
        lookup = np.asarray([*names, None], dtype=object)  # code -1 picks the trailing None
        return lookup[idx[rows]]


@dataclass(frozen=True, eq=False)
class RequestCounts:
    """Requests per model per interval: `counts[m, t]` arrived in [start_s + t·interval_s, … + interval_s)."""

    models: tuple[str, ...]
    start_s: float
    interval_s: float
    counts: np.ndarray  # (M, T) int64

    def series(self, model: str) -> np.ndarray:
        return self.counts[self.models.index(model)]


def request_counts(
    session: Session, *, fleet: str, start_s: float, end_s: float, interval_s: float,
    models: Sequence[str] | None = None,
) -> RequestCounts:
    """Counts per model per interval over [start_s, end_s), grouped in the database (a covering-index scan).

    Models with no request in the range appear only if named in `models` (then with zeros), in that order;
    otherwise models are sorted by name.
    """
    if not interval_s > 0:
        raise InputError("interval_s", interval_s, "must be > 0")
    if not end_s > start_s:
        raise InputError("end_s", end_s, f"must be > start_s ({start_s})")
    fleet_id = get_fleet(session, name=fleet).id
    num_intervals = int(np.ceil((end_s - start_s) / interval_s))
    t = RequestTelemetryRow
    offset = (t.arrival_s - start_s) / interval_s
    # Arrivals are ≥ start_s, so truncation is floor; PostgreSQL's integer cast rounds, so it floors explicitly.
    bucket = cast(offset, Integer) if session.get_bind().dialect.name == "sqlite" else func.floor(offset)
    query = (
        select(t.model, bucket.label("bucket"), func.count())
        .where(t.fleet_id == fleet_id, t.arrival_s >= start_s, t.arrival_s < end_s)
        .group_by(t.model, "bucket")
    )
    if models is not None:
        query = query.where(t.model.in_(list(models)))
    rows = session.execute(query).all()
    names = tuple(models) if models is not None else tuple(sorted({r[0] for r in rows}))
    counts = np.zeros((len(names), num_intervals), np.int64)
    pos = {m: i for i, m in enumerate(names)}
    for model, b, c in rows:
        counts[pos[model], min(int(b), num_intervals - 1)] += c
    return RequestCounts(models=names, start_s=start_s, interval_s=interval_s, counts=counts)


def read_telemetry(
    session: Session, *, fleet: str, start_s: float, end_s: float, model: str | None = None
) -> tuple[RequestTable, RequestOutcomes]:
    """Requests that arrived in [start_s, end_s) (optionally of one model), by arrival, as columns."""
    fleet_id = get_fleet(session, name=fleet).id
    t = RequestTelemetryRow
    columns = (
        t.arrival_s, t.request_id, t.model, t.slo_class, t.prompt_tokens, t.output_tokens, t.ttft_s, t.tpot_s,
        t.e2e_s, t.finish_s, t.outcome, t.drop_reason, t.worker_id, t.replica_id,
    )
    query = select(*columns).where(t.fleet_id == fleet_id, t.arrival_s >= start_s, t.arrival_s < end_s)
    if model is not None:
        query = query.where(t.model == model)
    rows = session.execute(query.order_by(t.arrival_s, t.id)).all()
    cols = list(zip(*rows)) if rows else [()] * len(columns)
    model_idx, model_names = _encode("model", cols[2], len(rows))
    slo_idx, slo_names = _encode("slo_class", cols[3], len(rows))
    table = RequestTable.from_columns(
        arrival_s=np.asarray(cols[0], np.float64), request_id=cols[1], model_idx=model_idx, slo_idx=slo_idx,
        prompt_tokens=cols[4], output_tokens=cols[5], model_names=model_names, slo_names=slo_names, sort=False,
    )
    outcomes = RequestOutcomes.from_columns(
        ttft_s=cols[6], tpot_s=cols[7], e2e_s=cols[8], finish_s=cols[9], outcome=cols[10], drop_reason=cols[11],
        worker_id=cols[12], replica_id=cols[13],
    )
    return table, outcomes


def _float_column(name: str, values: Sequence[float | None] | np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    try:
        arr = np.asarray(values, dtype=np.float64)  # None becomes NaN
    except (TypeError, ValueError):
        bad = next(v for v in values if not isinstance(v, (int, float, type(None))))
        raise InputError(name, bad, "a number of seconds (None or NaN where unknown)") from None
    if arr.shape != (n,):
        raise InputError(name, len(arr), f"one value per request ({n})")
    return arr


def _encode(name: str, values: Sequence[str | None] | None, n: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Dictionary-encode labels in order of first appearance; None → -1."""
    if values is None:
        return np.full(n, NO_LABEL, np.int32), ()
    if len(values) != n:
        raise InputError(name, len(values), f"one value per request ({n})")
    names: dict[str, int] = {}
    codes = np.fromiter(
        (NO_LABEL if v is None else names.setdefault(v, len(names)) for v in values), np.int32, n
    )
    return codes, tuple(names)
