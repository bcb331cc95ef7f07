"""Plan API under load, on loopback: GET a plan at a fixed request rate, telemetry ingest in batches, and the time
from a stored plan to its first action on a worker — each beside a baseline measured in the same run.

    python bench/api_load.py                      # SQLite; PostgreSQL too with --pg-url or FLEETWISE_TEST_POSTGRES_URL
    python bench/api_load.py --rate 200 --seconds 10 --ingest-rows 200000

1. **GET /v1/plans/{id}** — a real plan (the `dedicated` planner on examples/small-hetero.yaml with telemetry), served
   by `fleetwise serve --no-cron` in its own process; an open-loop generator (16 threads, each an httpx keep-alive
   connection) sends at `--rate` requests per second for `--seconds`, each at its scheduled time, and latency counts
   from that scheduled time (so queueing is not hidden). Baselines: `GET /healthz` at the same rate (the HTTP floor: no token, no database) and
   the repository read the route makes, in-process. Target: p99 ≤ 20 ms at 200 requests/s.
2. **POST /v1/fleets/{name}/telemetry** — `--ingest-rows` rows in batches of `--batch-rows`, `--concurrency` in
   flight, bodies encoded before the clock starts. Baseline: the same batches through `db.ingest.ingest_requests`
   in-process (the floor the API adds its parsing and validation to). Target: ≥ 20,000 requests/s.
3. **Plan → first action** — a plan stored in the database, then `POST /v1/plans/{id}/apply`; the clock stops when the
   first action reaches the worker (a real engine behind `LocalWorkerClient`; the wrapper only reads the clock). The
   controller runs in this process. Target: ≤ 50 ms.

Writes `bench/results/api_load.json` and prints a table.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.api.app import create_app
from controller.api.plan_views import summary
from controller.api.routes.telemetry import to_columns
from controller.api.schemas import TelemetryBatchIn
from controller.backends import BackendRegistry, FleetBackend
from controller.replan.cycle import run_cycle
from controller.runtime import Controller
from controller.settings import load_settings
from core.clock import WallClock
from core.fleet import load_fleet
from core.plan import Plan, Replica, SolverStats, make_plan_id
from db import migrate
from db.engine import make_engine
from db.fleets import put_fleet
from db.ingest import ingest_requests
from db.plans import create_plan, get_plan
from db.tokens import create_token
from executors import BackendKind, RoutingTable, WorkerSet
from tests.controller.telemetry import batch
from workers.agent import serve_in_thread

RESULTS = ROOT / "bench" / "results" / "api_load.json"
FLEET_FILE = ROOT / "examples" / "small-hetero.yaml"
TARGETS = {"get_plan_p99_ms": 20.0, "ingest_rows_per_s": 20_000.0, "first_action_ms": 50.0}
console = Console(width=max(Console().width, 120))


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "n": len(values)}


# -- databases and the server process --------------------------------------------------------------------------------
@contextmanager
def database(backend: str, pg_url: str | None) -> Iterator[str]:
    """A freshly migrated database: a temporary SQLite file or a temporary PostgreSQL schema."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            migrate.upgrade(url)
            yield url
        return
    assert pg_url is not None
    schema = f"bench_api_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def prepare(url: str) -> tuple[str, str, str]:
    """Store the fleet, 20,000 rows of telemetry and a `dedicated` plan made and executed on simulated GPUs (so it
    places every model, as in production); returns (fleet, plan id, admin token)."""
    spec = load_fleet(FLEET_FILE)
    clock = WallClock()
    ctl = Controller(load_settings(database_url=url, policy="dedicated", history_s=3600, forecast_interval_s=60),
                     clock=clock, backends=BackendRegistry(clock, {spec.name: FleetBackend(backend="sim")}))
    try:
        with ctl.sessions.begin() as s:
            put_fleet(s, spec=spec)
            _, secret = create_token(s, name="bench", scopes=["admin"])
        body = batch(20_000, start_s=ctl.clock.now() - 1800, span_s=1800, models=tuple(spec.model_names))
        table, outcomes = to_columns(TelemetryBatchIn.model_validate(_with_classes(body, spec)), spec)
        with ctl.sessions.begin() as s:
            ingest_requests(s, fleet=spec.name, table=table, outcomes=outcomes)
        result = run_cycle(ctl, spec.name, trigger="bench", policy="dedicated")
        assert result.plan_id is not None, result
        return spec.name, result.plan_id, secret
    finally:
        ctl.close()


def _with_classes(body: dict[str, Any], spec: Any) -> dict[str, Any]:
    classes = [c.name for c in spec.slo_classes]
    return {**body, "slo_class": [classes[i % len(classes)] for i in range(len(body["request_id"]))]}


@contextmanager
def server(url: str) -> Iterator[str]:
    """`fleetwise serve --no-cron` in its own process; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--port", "0", "--no-cron", "--url", url],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FLEETWISE_MAX_BATCH_ROWS": "100000"})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("LISTENING "):
                yield line.split()[1]
                break
        else:
            raise RuntimeError(proc.stderr.read() if proc.stderr else "fleetwise serve did not start")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# -- 1. GET at a fixed rate ------------------------------------------------------------------------------------------
def open_loop(base: str, path: str, headers: dict[str, str], rate: float, seconds: float,
              threads: int = 16) -> dict[str, Any]:
    """GET `path` at `rate` per second for `seconds`, open loop: request i is due at start + i/rate whatever happened
    to the others, and its latency counts from that due time (late sends count as latency, not as a slower rate).
    Sent by `threads` threads, each with its own keep-alive connection (httpx)."""
    n = int(rate * seconds)
    due = queue.Queue()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    warmed = threading.Barrier(threads + 1)

    def sender() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for _ in range(5):  # warm this connection
                client.get(path)
            warmed.wait()
            while (when := due.get()) is not None:
                time.sleep(max(0.0, when - time.perf_counter()))
                ok = client.get(path).status_code == 200
                with lock:
                    latencies.append(time.perf_counter() - when)
                    errors[0] += not ok

    workers = [threading.Thread(target=sender, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    warmed.wait()  # the schedule starts once every connection is open and warm (else its first due times are late)
    start = time.perf_counter() + 0.5
    for i in range(n):
        due.put(start + i / rate)
    for _ in workers:
        due.put(None)
    for w in workers:
        w.join()
    return {**percentiles(latencies), "errors": errors[0], "rate_per_s": rate, "threads": threads}


def repository_read(url: str, plan_id: str, repeats: int = 200) -> dict[str, Any]:
    """The route's own database work, in-process: read the plan row and shape its answer."""
    ctl = Controller(load_settings(database_url=url))
    try:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            with ctl.sessions.begin() as s:
                summary(get_plan(s, plan_id=plan_id), full=True).model_dump_json()
            times.append(time.perf_counter() - t)
        return percentiles(times)
    finally:
        ctl.close()


# -- 2. ingest -------------------------------------------------------------------------------------------------------
async def ingest_load(base: str, fleet: str, token: str, bodies: list[bytes], rows_per_body: int,
                      concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    queue = list(enumerate(bodies))
    acked = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        async def worker() -> None:
            nonlocal acked
            while queue:
                _, body = queue.pop()
                res = await client.post(f"/v1/fleets/{fleet}/telemetry", content=body)
                if res.status_code != 201:
                    raise RuntimeError(f"ingest refused: {res.status_code} {res.text[:200]}")
                acked += res.json()["rows"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {"rows": acked, "seconds": seconds, "rows_per_s": acked / seconds, "batch_rows": rows_per_body,
            "concurrency": concurrency}


def ingest_bodies(fleet_spec: Any, rows: int, batch_rows: int) -> list[dict[str, Any]]:
    out = []
    for i, lo in enumerate(range(0, rows, batch_rows)):
        body = batch(batch_rows, start_s=1000.0 + lo, first_id=10_000_000 + lo, seed=i,
                     models=tuple(fleet_spec.model_names))
        out.append(_with_classes(body, fleet_spec))
    return out


def direct_ingest(url: str, fleet_spec: Any, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """The same batches through `ingest_requests` in-process, one committed transaction each (into a fresh
    database: the API run's rows are not under it)."""
    ctl = Controller(load_settings(database_url=url))
    try:
        with ctl.sessions.begin() as s:
            put_fleet(s, spec=fleet_spec)
        parsed = [to_columns(TelemetryBatchIn.model_validate(b), fleet_spec) for b in bodies]
        start = time.perf_counter()
        rows = 0
        for table, outcomes in parsed:
            with ctl.sessions.begin() as s:
                rows += ingest_requests(s, fleet=fleet_spec.name, table=table, outcomes=outcomes)
        seconds = time.perf_counter() - start
        return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}
    finally:
        ctl.close()


# -- 3. plan → first action -----------------------------------------------------------------------------------------
TINY_FLEET = {
    "apiVersion": "fleetwise/v1", "kind": "Fleet", "metadata": {"name": "bench-first-action"},
    "spec": {"pools": [{"name": "cpu", "count": 1, "gpus_per_node": 1,
                        "gpu": {"name": "CPU", "memory_gib": 1.5, "hbm_gbps": 20, "peak_tflops": 0.2,
                                "pcie_gbps": 8, "price_per_hour": 0.02}}],
             "models": [{"name": "tiny-2l", "arch": "Tiny-Llama-2L"}, {"name": "tiny-4l", "arch": "Tiny-Llama-4L"}],
             "slo_classes": [{"name": "interactive", "ttft_s": 2.0, "tpot_s": 0.2}]},
}


class TimedClient:
    """A worker client that notes when the first action reaches it, then hands it to the real engine's client."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.first_s: float | None = None

    @property
    def worker_id(self) -> str:
        return self.inner.worker_id

    def status(self) -> Any:
        return self.inner.status()

    def submit(self, request: Any) -> Any:
        return self.inner.submit(request)

    def apply(self, action: Any) -> Any:
        if self.first_s is None:
            self.first_s = time.perf_counter()
        return self.inner.apply(action)


def first_action_latencies(url: str, runs: int) -> list[float]:
    """Store a plan (alternating between the two tiny models on one CPU engine), apply it through the API, and time
    the first action's arrival at the worker; `runs` times."""
    from core.fleet import FleetSpec
    from workers.control import LocalWorkerClient
    from workers.engine import Engine, EngineConfig
    from workers.residency import ModelSource

    spec = FleetSpec.model_validate(TINY_FLEET)
    ctl = Controller(load_settings(database_url=url))
    engine = Engine(EngineConfig(worker_id="cpu/0", pool="cpu", gpu_type="CPU", memory_gib=1.0, kv_pages=128,
                                 page_bytes=64 * 1024), [ModelSource(m.name, m.arch) for m in spec.models])
    worker = TimedClient(LocalWorkerClient(engine))
    ctl.backends.register(spec.name, WorkerSet([worker], RoutingTable(), kind=BackendKind.LOCAL))
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=spec)
        _, secret = create_token(s, name="first-action", scopes=["plan"])
    agent = serve_in_thread(create_app(ctl))
    latencies, parent = [], None
    try:
        with httpx.Client(base_url=agent.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as http:
            for g in range(runs + 1):  # the first apply warms the path up; it is not counted
                plan = _tiny_plan(spec.name, g, parent, ctl.clock.now())
                with ctl.sessions.begin() as s:
                    create_plan(s, plan=plan, advisory=False)
                worker.first_s = None
                sent = time.perf_counter()
                assert http.post(f"/v1/plans/{plan.plan_id}/apply").status_code == 202
                while http.get(f"/v1/plans/{plan.plan_id}").json()["status"] == "applying":
                    time.sleep(0.005)
                assert worker.first_s is not None
                if g:
                    latencies.append(worker.first_s - sent)
                parent = plan.plan_id
    finally:
        agent.stop()
        worker.inner.close()
        ctl.close()
    return latencies


def _tiny_plan(fleet: str, generation: int, parent: str | None, now_s: float) -> Plan:
    model = ("tiny-2l", "tiny-4l")[generation % 2]
    replica = Replica(replica_id=f"{model}@cpu/0", model=model, pool="cpu", gpu_type="CPU", gpu_ids=("cpu/0",),
                      kv_share_gib=0.004)
    return Plan(plan_id=make_plan_id(fleet, "bench", generation, str(generation)), parent_id=parent, fleet=fleet,
                policy="bench", generation=generation, created_at_s=now_s, replicas=(replica,),
                routing={model: {replica.replica_id: 1.0}}, solver=SolverStats(name="bench", status="heuristic"),
                reasons=(f"serve {model} (benchmark)",))


# -- the run ---------------------------------------------------------------------------------------------------------
def run_backend(backend: str, pg_url: str | None, rate: float, seconds: float, ingest_rows: int, batch_rows: int,
                concurrency: int, apply_runs: int) -> dict[str, Any]:
    spec = load_fleet(FLEET_FILE)
    bodies = ingest_bodies(spec, ingest_rows, batch_rows)
    encoded = [json.dumps(b).encode() for b in bodies]
    with database(backend, pg_url) as url:
        fleet, plan_id, token = prepare(url)
        auth = {"Authorization": f"Bearer {token}"}
        with server(url) as base:
            console.print(f"[{backend}] GET plan at {rate:g}/s for {seconds:g} s …")
            get_plan_ms = open_loop(base, f"/v1/plans/{plan_id}", auth, rate, seconds)
            healthz_ms = open_loop(base, "/healthz", {}, rate, seconds)
            console.print(f"[{backend}] ingest {ingest_rows} rows …")
            ingest = asyncio.run(ingest_load(base, fleet, token, encoded, batch_rows, concurrency))
        read_ms = repository_read(url, plan_id)
    with database(backend, pg_url) as url:
        direct = direct_ingest(url, spec, bodies)
        console.print(f"[{backend}] plan → first action × {apply_runs} …")
        first_action = percentiles(first_action_latencies(url, apply_runs))
    return {"get_plan": get_plan_ms, "get_healthz": healthz_ms, "get_plan_repository": read_ms, "ingest_api": ingest,
            "ingest_direct": direct, "first_action": first_action}


def table_for(results: dict[str, dict[str, Any]]) -> Table:
    t = Table("backend", "measure", "p50 ms", "p99 ms", "rows/s", "target", "met", title="Plan API under load")
    for backend, r in results.items():
        g, h, rep = r["get_plan"], r["get_healthz"], r["get_plan_repository"]
        t.add_row(backend, f"GET plan @ {g['rate_per_s']:g}/s", f"{g['p50_ms']:.1f}", f"{g['p99_ms']:.1f}", "",
                  "p99 ≤ 20 ms", _met(g["p99_ms"] <= TARGETS["get_plan_p99_ms"]))
        t.add_row("", f"  baseline: GET /healthz @ {h['rate_per_s']:g}/s", f"{h['p50_ms']:.1f}", f"{h['p99_ms']:.1f}",
                  "", "", "")
        t.add_row("", "  baseline: repository read in-process", f"{rep['p50_ms']:.1f}", f"{rep['p99_ms']:.1f}", "",
                  "", "")
        i, d = r["ingest_api"], r["ingest_direct"]
        t.add_row("", f"ingest via API ({i['batch_rows']}-row batches × {i['concurrency']})", "", "",
                  f"{i['rows_per_s']:,.0f}", "≥ 20,000/s", _met(i["rows_per_s"] >= TARGETS["ingest_rows_per_s"]))
        t.add_row("", "  baseline: ingest_requests in-process", "", "", f"{d['rows_per_s']:,.0f}", "", "")
        f = r["first_action"]
        t.add_row("", "stored plan → first action on a worker", f"{f['p50_ms']:.1f}", f"{f['p99_ms']:.1f}", "",
                  "≤ 50 ms (p50)", _met(f["p50_ms"] <= TARGETS["first_action_ms"]))
    return t


def _met(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def main(
    rate: Annotated[float, typer.Option(help="GET requests per second.")] = 200.0,
    seconds: Annotated[float, typer.Option(help="Seconds of GET load.")] = 10.0,
    ingest_rows: Annotated[int, typer.Option(help="Telemetry rows sent through the API.")] = 200_000,
    batch_rows: Annotated[int, typer.Option(help="Rows per telemetry batch.")] = 5_000,
    concurrency: Annotated[int, typer.Option(help="Telemetry batches in flight.")] = 2,
    apply_runs: Annotated[int, typer.Option(help="Plans applied for the first-action latency.")] = 20,
    pg_url: Annotated[str | None, typer.Option(help="PostgreSQL server URL (a temporary schema is used).")] = None,
) -> None:
    pg = pg_url or os.environ.get("FLEETWISE_TEST_POSTGRES_URL")
    results = {b: run_backend(b, pg, rate, seconds, ingest_rows, batch_rows, concurrency, apply_runs)
               for b in (["sqlite", "postgresql"] if pg else ["sqlite"])}
    meta = {"command": "python bench/api_load.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(),
            "platform": platform.platform(), "load_average": os.getloadavg(), "targets": TARGETS}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    console.print(table_for(results))
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    typer.run(main)
