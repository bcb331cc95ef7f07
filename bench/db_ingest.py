"""Telemetry ingest throughput: `db.ingest.ingest_requests` against a naive ORM `session.add_all`, on SQLite and
PostgreSQL, measured in the same run.

    python bench/db_ingest.py                      # SQLite; PostgreSQL too when FLEETWISE_TEST_POSTGRES_URL is set
    python bench/db_ingest.py --rows 1000000 --pg-url postgresql+psycopg://USER:PASS@HOST:5432/DB

Rows are synthetic (20 models, Poisson arrivals, 10 % dropped with a reason, latencies for the rest) and go in
as the API would send them: batches of `--batch-rows`, each its own committed transaction, into a freshly
migrated database (a temporary SQLite file; a temporary PostgreSQL schema, dropped afterwards). Every run is
verified: the table must then hold exactly the rows sent. Target: ≥ 50,000 rows/s into SQLite (issue 2). Writes
`bench/results/db_ingest.json` and prints a table.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.requests import RequestTable
from db import migrate
from db.engine import make_engine, make_sessionmaker
from db.fleets import ensure_fleet
from db.ingest import ingest_requests
from db.models import REQUEST_OUTCOMES, RequestTelemetryRow
from db.telemetry import RequestOutcomes, request_counts

RESULTS = Path(__file__).resolve().parent / "results" / "db_ingest.json"
TARGET_SQLITE_ROWS_PER_S = 50_000
FLEET = "bench"
console = Console(width=max(Console().width, 110))  # the table needs ~100 columns; never wrap it
UrlFactory = Callable[[], AbstractContextManager[str]]  # a database URL that lives while the block runs


@dataclass(frozen=True)
class Measurement:
    backend: str
    path: str  # "bulk" (ingest_requests) or "orm" (session.add_all)
    rows: int
    seconds: float  # wall time
    cpu_s: float  # CPU time of this process (the SQLite engine runs in it; a PostgreSQL server does not)
    verified_rows: int  # rows in the table afterwards; must equal `rows`
    counts_query_s: float | None = None  # request_counts over everything ingested (1-minute intervals)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / self.cpu_s


def synthetic_batch(n: int, seed: int = 0) -> tuple[RequestTable, RequestOutcomes]:
    """`n` requests over 20 models at 300 req/s, 10 % dropped, with latencies and workers for the rest."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / 300.0, n))
    table = RequestTable.from_columns(
        arrival_s=arrival, model_idx=rng.zipf(1.5, n) % 20, slo_idx=rng.integers(0, 2, n),
        prompt_tokens=rng.integers(16, 4096, n), output_tokens=rng.integers(1, 1024, n),
        model_names=[f"model-{i:02d}" for i in range(20)], slo_names=["interactive", "batch"],
    )
    dropped = rng.random(n) < 0.1
    ttft = np.where(dropped, np.nan, rng.exponential(0.3, n))
    tpot = np.where(dropped, np.nan, rng.uniform(0.01, 0.08, n))
    e2e = ttft + tpot * table.output_tokens
    outcomes = RequestOutcomes(
        ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, finish_s=arrival + np.nan_to_num(e2e, nan=1.0),
        outcome_idx=np.where(dropped, REQUEST_OUTCOMES.index("dropped"), 0).astype(np.int8),
        drop_reason_idx=np.where(dropped, 0, -1).astype(np.int32), drop_reasons=("kv_exhausted",),
        worker_idx=rng.integers(0, 16, n).astype(np.int32), worker_ids=tuple(f"h100/{i}" for i in range(16)),
        replica_idx=np.where(dropped, -1, rng.integers(0, 32, n)).astype(np.int32),
        replica_ids=tuple(f"r{i}" for i in range(32)),
    )
    return table, outcomes


def bulk_ingest(sessions: sessionmaker[Session], table: RequestTable, outcomes: RequestOutcomes,
                batch_rows: int, progress: Progress, label: str) -> tuple[float, float]:
    task = progress.add_task(label, total=len(table))
    start, start_cpu = time.perf_counter(), time.process_time()
    for lo in range(0, len(table), batch_rows):
        idx = np.arange(lo, min(lo + batch_rows, len(table)))
        with sessions.begin() as s:
            ingest_requests(s, fleet=FLEET, table=table.take(idx), outcomes=outcomes.take(idx))
        progress.advance(task, len(idx))
    return time.perf_counter() - start, time.process_time() - start_cpu


def orm_ingest(sessions: sessionmaker[Session], table: RequestTable, outcomes: RequestOutcomes,
               batch_rows: int, progress: Progress, label: str) -> tuple[float, float]:
    """The naive path: one ORM object per row, `add_all`, commit per batch."""
    task = progress.add_task(label, total=len(table))
    start, start_cpu = time.perf_counter(), time.process_time()
    with sessions.begin() as s:
        fleet_id = ensure_fleet(s, name=FLEET).id
    labels = {c: outcomes.labels(c) for c in ("outcome", "drop_reason", "worker_id", "replica_id")}
    for lo in range(0, len(table), batch_rows):
        with sessions.begin() as s:
            hi = min(lo + batch_rows, len(table))
            s.add_all(_orm_row(fleet_id, table, outcomes, labels, i) for i in range(lo, hi))
        progress.advance(task, min(batch_rows, len(table) - lo))
    return time.perf_counter() - start, time.process_time() - start_cpu


def _orm_row(fleet_id: int, table: RequestTable, outcomes: RequestOutcomes, labels: dict[str, np.ndarray],
             i: int) -> RequestTelemetryRow:
    r = table.request(i)
    floats = {c: None if np.isnan(v) else float(v) for c in ("ttft_s", "tpot_s", "e2e_s", "finish_s")
              for v in [getattr(outcomes, c)[i]]}
    return RequestTelemetryRow(
        fleet_id=fleet_id, request_id=r.request_id, model=r.model, slo_class=r.slo_class, arrival_s=r.arrival_s,
        prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens, **floats,
        **{c: labels[c][i] for c in labels},
    )


def measure(backend: str, url_for: UrlFactory, path: str, rows: int, batch_rows: int,
            progress: Progress) -> Measurement:
    table, outcomes = synthetic_batch(rows)
    with url_for() as url:
        migrate.upgrade(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        with sessions.begin() as s:
            ensure_fleet(s, name=FLEET)
        run = bulk_ingest if path == "bulk" else orm_ingest
        seconds, cpu_s = run(sessions, table, outcomes, batch_rows, progress, f"{backend} {path}")
        with sessions.begin() as s:
            verified = s.scalar(select(func.count()).select_from(RequestTelemetryRow))
            start = time.perf_counter()
            counts = request_counts(s, fleet=FLEET, start_s=0.0, end_s=float(table.arrival_s[-1]) + 1, interval_s=60)
            query_s = time.perf_counter() - start
        assert counts.counts.sum() == verified, "per-interval counts must add up to the rows stored"
        engine.dispose()
    return Measurement(backend, path, rows, seconds, cpu_s, verified, query_s)


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="fleetwise-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


def postgres_url(server_url: str) -> UrlFactory:
    @contextmanager
    def schema() -> Iterator[str]:
        name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
        admin = make_engine(server_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        try:
            url = make_url(server_url).update_query_dict({"options": f"-csearch_path={name}"})
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
            admin.dispose()
    return schema


def report(results: list[Measurement], config: dict[str, object]) -> None:
    t = Table(title="Telemetry ingest (rows/s, higher is better)", title_justify="left")
    for col in ("backend", "path", "rows", "wall s", "rows/s", "×ORM", "rows/CPU-s", "exact", "query s"):
        t.add_column(col, justify="left" if col in ("backend", "path") else "right", no_wrap=True)
    orm = {m.backend: m.rows_per_s for m in results if m.path == "orm"}
    for m in results:
        ok = "[green]yes[/]" if m.verified_rows == m.rows else f"[red]no: {m.verified_rows:,}[/]"
        speedup = f"{m.rows_per_s / orm[m.backend]:.1f}" if m.path == "bulk" and m.backend in orm else "—"
        t.add_row(m.backend.replace("postgresql", "postgres"), m.path, f"{m.rows:,}", f"{m.seconds:.2f}", f"{m.rows_per_s:,.0f}", speedup,
                  f"{m.rows_per_cpu_s:,.0f}", ok,
                  f"{m.counts_query_s:.3f}" if m.counts_query_s is not None else "—")
    sqlite_bulk = next(m.rows_per_s for m in results if m.backend == "sqlite" and m.path == "bulk")
    met = "[green]met[/]" if sqlite_bulk >= TARGET_SQLITE_ROWS_PER_S else "[red]missed[/]"
    t.caption = (
        f"target ≥ {TARGET_SQLITE_ROWS_PER_S:,} rows/s into SQLite: {met}\n"
        f"rows/CPU-s: rows per second of this process's CPU (SQLite runs in it, a PostgreSQL server does not)\n"
        f"exact: the table holds exactly the rows sent; query s: request_counts over all rows, 1-minute bins\n"
        f"load average at start: {config['load_average_1m']:.1f} on {config['cpus']} CPUs"
    )
    console.print(t)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": config,
        "target_sqlite_rows_per_s": TARGET_SQLITE_ROWS_PER_S,
        "results": [{**asdict(m), "rows_per_s": m.rows_per_s, "rows_per_cpu_s": m.rows_per_cpu_s} for m in results],
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


def main(
    rows: Annotated[int, typer.Option(min=1, help="Rows for the bulk path.")] = 1_000_000,
    orm_rows: Annotated[int, typer.Option(min=1, help="Rows for the naive ORM path (it is slow).")] = 20_000,
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows per committed transaction.")] = 100_000,
    pg_url: Annotated[str | None, typer.Option(help="PostgreSQL server URL (default: $FLEETWISE_TEST_POSTGRES_URL)."
                                               )] = None,
) -> None:
    """Measure bulk and ORM ingest into SQLite (and PostgreSQL when a URL is given)."""
    pg = pg_url or os.environ.get("FLEETWISE_TEST_POSTGRES_URL")
    backends: list[tuple[str, UrlFactory]] = [("sqlite", sqlite_url)]
    if pg:
        backends.append(("postgresql", postgres_url(pg)))
    else:
        console.print("[yellow]PostgreSQL skipped: pass --pg-url or set FLEETWISE_TEST_POSTGRES_URL[/]")
    load_average_1m = os.getloadavg()[0]  # other work on the machine slows the wall-clock figures
    results = []
    with Progress(console=console, transient=True) as progress:
        for backend, url_for in backends:
            results.append(measure(backend, url_for, "bulk", rows, batch_rows, progress))
            results.append(measure(backend, url_for, "orm", orm_rows, min(batch_rows, orm_rows), progress))
    config = {
        "rows": rows, "orm_rows": orm_rows, "batch_rows": batch_rows, "backends": [b for b, _ in backends],
        "python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "load_average_1m": load_average_1m,
    }
    report(results, config)


if __name__ == "__main__":
    typer.run(main)
