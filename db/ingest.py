"""Bulk telemetry ingest: `ingest_requests` writes a batch of request rows through each driver's fast path.

The ORM would build one object per row (a few thousand rows per second); here numpy columns become row tuples
chunk by chunk (`ndarray.tolist` runs in C) and go to the driver in one call per chunk: `executemany` of
multi-row `INSERT … VALUES` on SQLite, binary `COPY … FROM STDIN` on PostgreSQL (psycopg 3). Everything runs inside the caller's transaction, so a batch is
written whole or not at all, and the driver's row count is checked against the batch size.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from core.errors import InputError
from core.requests import RequestTable
from db.fleets import get_fleet
from db.models import NAME, REQUEST_OUTCOMES, RequestTelemetryRow
from db.telemetry import LABEL_COLUMNS, LATENCY_COLUMNS, RequestOutcomes

TABLE = RequestTelemetryRow.__tablename__
COLUMNS = (
    "fleet_id", "request_id", "model", "slo_class", "arrival_s", "prompt_tokens", "output_tokens",
    *LATENCY_COLUMNS, "outcome", *LABEL_COLUMNS,
)
MAX_LABEL_CHARS = {"model": NAME, "slo_class": 64, "drop_reason": 200, "worker_id": NAME, "replica_id": NAME}
# PostgreSQL types of COLUMNS, for binary COPY (faster than text: no number formatting and parsing).
COPY_TYPES = (
    "int4", "int8", "varchar", "varchar", "float8", "int4", "int4", "float8", "float8", "float8", "float8",
    "varchar", "varchar", "varchar", "varchar",
)
DEFAULT_CHUNK_ROWS = 50_000
CLOCK_SLACK_S = 1e-6  # times are compared to the microsecond
SQLITE_ROWS_PER_STATEMENT = 64  # 64 × 15 parameters, far below SQLite's limit of 32,766 per statement


def ingest_requests(
    session: Session,
    *,
    fleet: str,
    table: RequestTable,
    outcomes: RequestOutcomes | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> int:
    """Append `table` (and, row by row, `outcomes`) to fleet `fleet`'s telemetry; returns the rows written.

    Without `outcomes` the rows record arrivals only (outcome 'unknown', no latencies) — e.g. a trace imported
    for forecasting. The batch is validated first (`InputError` naming the column, the value and what is
    allowed); nothing is committed here.
    """
    fleet_id = get_fleet(session, name=fleet).id
    _check_batch(table, outcomes)
    dbapi_conn = session.connection().connection.driver_connection
    write = _copy_rows if session.get_bind().dialect.name == "postgresql" else _executemany_rows
    written = 0
    for lo in range(0, len(table), chunk_rows):
        hi = min(lo + chunk_rows, len(table))
        with _gc_paused():
            rows = _rows(fleet_id, table, outcomes, lo, hi)
        count = write(dbapi_conn, rows)
        if count != hi - lo:
            raise RuntimeError(f"telemetry ingest wrote {count} rows of a chunk of {hi - lo}")
        written += count
    return written


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building row tuples: they hold no cycles, and without the pause
    the collector rescans the growing list every few hundred allocations (several times slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _executemany_rows(dbapi_conn: Any, rows: list[tuple[Any, ...]]) -> int:
    """Insert with multi-row VALUES lists of `SQLITE_ROWS_PER_STATEMENT` rows (the rest one row per statement):
    fewer statement executions cut the CPU per row by about a third against one row per statement."""
    whole = len(rows) - len(rows) % SQLITE_ROWS_PER_STATEMENT
    with _gc_paused():
        groups = [
            tuple(chain.from_iterable(rows[i:i + SQLITE_ROWS_PER_STATEMENT]))
            for i in range(0, whole, SQLITE_ROWS_PER_STATEMENT)
        ]
    cur = dbapi_conn.cursor()
    try:
        cur.executemany(_insert_sql(SQLITE_ROWS_PER_STATEMENT), groups)
        written = cur.rowcount if groups else 0
        cur.executemany(_insert_sql(1), rows[whole:])
        return written + (cur.rowcount if whole < len(rows) else 0)
    finally:
        cur.close()


def _insert_sql(num_rows: int) -> str:
    one_row = f"({', '.join('?' * len(COLUMNS))})"
    return f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES {', '.join([one_row] * num_rows)}"


def _copy_rows(dbapi_conn: Any, rows: list[tuple[Any, ...]]) -> int:
    with dbapi_conn.cursor() as cur:
        with cur.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        return cur.rowcount


def _rows(fleet_id: int, table: RequestTable, outcomes: RequestOutcomes | None, lo: int, hi: int) -> list[tuple]:
    n = hi - lo
    names = np.asarray(table.model_names, dtype=object)
    classes = np.asarray(table.slo_names, dtype=object)
    cols: list[list[Any]] = [
        [fleet_id] * n,
        table.request_id[lo:hi].tolist(),
        names[table.model_idx[lo:hi]].tolist(),
        classes[table.slo_idx[lo:hi]].tolist(),
        table.arrival_s[lo:hi].tolist(),
        table.prompt_tokens[lo:hi].tolist(),
        table.output_tokens[lo:hi].tolist(),
    ]
    if outcomes is None:
        cols += [[None] * n] * len(LATENCY_COLUMNS) + [["unknown"] * n] + [[None] * n] * len(LABEL_COLUMNS)
    else:
        cols += [_nullable(getattr(outcomes, c)[lo:hi]) for c in LATENCY_COLUMNS]
        cols += [outcomes.labels(c, slice(lo, hi)).tolist() for c in ("outcome", *LABEL_COLUMNS)]
    return list(zip(*cols))


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats with NaN → None (SQL NULL on both backends; COPY would store PostgreSQL's NaN otherwise)."""
    missing = np.isnan(values)
    if not missing.any():
        return values.tolist()
    out = values.astype(object)
    out[missing] = None
    return out.tolist()


def _check_batch(table: RequestTable, outcomes: RequestOutcomes | None) -> None:
    n = len(table)
    for name in ("prompt_tokens", "output_tokens"):
        col = getattr(table, name)
        if n and col.min() < 0:
            raise InputError(name, int(col.min()), "token counts must be ≥ 0")
    if n and not np.all(np.isfinite(table.arrival_s)):
        raise InputError("arrival_s", float(table.arrival_s[~np.isfinite(table.arrival_s)][0]), "a finite time")
    labels = {"model": table.model_names, "slo_class": table.slo_names}
    if outcomes is not None:
        _check_outcomes(outcomes, n)
        _check_consistent(table, outcomes)
        labels |= {"drop_reason": outcomes.drop_reasons, "worker_id": outcomes.worker_ids,
                   "replica_id": outcomes.replica_ids}
    for column, values in labels.items():
        too_long = next((v for v in values if len(v) > MAX_LABEL_CHARS[column]), None)
        if too_long is not None:
            raise InputError(column, too_long, f"at most {MAX_LABEL_CHARS[column]} characters")


def _check_outcomes(outcomes: RequestOutcomes, n: int) -> None:
    if len(outcomes) != n:
        raise InputError("outcomes", len(outcomes), f"one outcome per request ({n} requests)")
    for name in LATENCY_COLUMNS:
        col = getattr(outcomes, name)
        if col.shape != (n,):
            raise InputError(name, col.shape[0], f"one value per request ({n})")
        negative = col[col < 0]
        if name != "finish_s" and negative.size:
            raise InputError(name, float(negative[0]), "latencies must be ≥ 0 (NaN or None where unknown)")
    if n and not 0 <= outcomes.outcome_idx.min() <= outcomes.outcome_idx.max() < len(REQUEST_OUTCOMES):
        raise InputError("outcome_idx", int(outcomes.outcome_idx.max()), f"codes 0…{len(REQUEST_OUTCOMES) - 1}")


def _check_consistent(table: RequestTable, outcomes: RequestOutcomes) -> None:
    """Times that contradict each other in one row: a request cannot finish before it arrived, nor see its first
    token after its end. Unknown values (NaN) pass; the sender's float rounding is allowed for (`CLOCK_SLACK_S`)."""
    arrival, finish, ttft, e2e = table.arrival_s, outcomes.finish_s, outcomes.ttft_s, outcomes.e2e_s
    for i in np.flatnonzero(finish < arrival - CLOCK_SLACK_S)[:1]:
        raise InputError("finish_s", float(finish[i]), f"a time ≥ the request's arrival_s ({arrival[i]:.6f})",
                         problem=f"{finish[i]:.6f} (request_id {table.request_id[i]}) is before the request arrived")
    for i in np.flatnonzero(ttft > e2e + CLOCK_SLACK_S)[:1]:
        raise InputError("ttft_s", float(ttft[i]), f"at most the request's e2e_s ({e2e[i]:.6f})",
                         problem=f"{ttft[i]:.6f} (request_id {table.request_id[i]}) is after the request ended")
