"""Executor costs and effects, each beside its baseline measured in the same run.

    python bench/executors.py [--quick]

Writes bench/results/executors.json and prints a Rich table. Rows:
- diff: time to diff a plan that moves a quarter of the replicas of a G-GPU fleet (G = 64, 512, 2048);
- churn: actions emitted for a replan whose output differs from the fleet only by noise (routing shares ±3 %,
  KV shares ±2 %) on 256 replicas — with the default damping vs none;
- throughput: wall time to apply 256 actions on 64 workers that each take 20 ms per action (a network round trip
  plus engine work) — bounded concurrency (16) vs one action at a time;
- log: actions per second with zero-latency workers, in-memory log vs the durable SQLite log (fsync per write);
- first action: from `execute()` (plan stored in SQLite, 64 workers to observe) to the first action arriving at
  a worker.

The workers are `tests.executors.state_worker.StateMachineTestWorker`s (in-process state machines that keep the
full WorkerClient contract), so the figures are the executor's own costs, not an engine's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.protocols import ActionLog
from executors import (
    InMemoryActionLog,
    PlanExecutor,
    RetryPolicy,
    RoutingTable,
    RunnerConfig,
    diff,
    local_workers,
)
from executors.diff import NO_DAMPING
from tests.executors.plans import make_plan, replica, seen, status
from tests.executors.state_worker import StateMachineTestWorker, TestWorkerConfig

RESULTS = ROOT / "bench" / "results"
MODELS = ("chat", "code")


def _fleet(gpus: int) -> tuple[list, dict]:
    """Observed statuses (one replica per GPU) and the router's current routing."""
    observed = [status(f"h100/{g}", seen(f"{MODELS[g % 2]}@h100/{g}", MODELS[g % 2], (f"h100/{g}",)))
                for g in range(gpus)]
    routing = {m: {f"{m}@h100/{g}": 1.0 for g in range(gpus) if MODELS[g % 2] == m} for m in MODELS}
    return observed, routing


def bench_diff(gpus: int, repeats: int) -> dict:
    """Move every fourth replica to the other model (deactivate, activate, reroute)."""
    observed, routing = _fleet(gpus)
    replicas = tuple(replica(f"{m}@h100/{g}", m, (f"h100/{g}",))
                     for g in range(gpus) for m in [MODELS[(g + (g % 4 == 0)) % 2]])
    plan = make_plan(replicas)
    times, n = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        n = len(diff(observed, plan, routing=routing).actions)
        times.append(time.perf_counter() - start)
    return {"gpus": gpus, "actions": n, "median_s": statistics.median(times)}


def bench_churn(replicas_n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    observed, routing = _fleet(replicas_n)
    noisy = tuple(replica(f"{MODELS[g % 2]}@h100/{g}", MODELS[g % 2], (f"h100/{g}",),
                          kv_gib=20.0 * (1 + rng.uniform(-0.02, 0.02))) for g in range(replicas_n))
    weights = {m: {r: w * (1 + rng.uniform(-0.03, 0.03)) for r, w in rs.items()} for m, rs in routing.items()}
    plan = make_plan(noisy, routing=weights)
    return {"replicas": replicas_n, "actions_damped": len(diff(observed, plan, routing=routing).actions),
            "actions_undamped": len(diff(observed, plan, routing=routing, damping=NO_DAMPING).actions)}


def _workers(n: int, delay_s: float, on_apply=None) -> dict[str, StateMachineTestWorker]:
    return {f"h100/{i}": StateMachineTestWorker(TestWorkerConfig(f"h100/{i}", memory_total_gib=1e6,
                                                                 apply_delay_s=delay_s), on_apply)
            for i in range(n)}


def _activation_plan(n_workers: int, per_worker: int):
    return make_plan(tuple(replica(f"m{k}@h100/{w}", "chat", (f"h100/{w}",), kv_gib=1.0)
                           for w in range(n_workers) for k in range(per_worker)))


def _run(n_workers: int, per_worker: int, delay_s: float, concurrency: int, log: ActionLog) -> tuple[float, int]:
    workers = _workers(n_workers, delay_s)
    executor = PlanExecutor(local_workers(workers, workers.__getitem__, RoutingTable()), log,
                            config=RunnerConfig(max_concurrency=concurrency, retry=RetryPolicy()))
    start = time.perf_counter()
    report = executor.execute(_activation_plan(n_workers, per_worker), routing={})
    assert report.outcome == "applied", report.replan_reasons
    return time.perf_counter() - start, len(report.actions)


def _sql_log(directory: Path) -> ActionLog | None:
    try:
        from db import migrate
        from db.action_log import SqlActionLog
    except ImportError:
        return None
    url = f"sqlite:///{directory / 'bench.db'}"
    migrate.upgrade(url)
    return SqlActionLog.from_url(url)


def bench_first_action(directory: Path, n_workers: int) -> dict:
    log = _sql_log(directory)
    if log is None:
        return {"skipped": "db.action_log not available"}
    arrived = threading.Event()
    workers = _workers(n_workers, 0.0, lambda action: arrived.set())
    executor = PlanExecutor(local_workers(workers, workers.__getitem__, RoutingTable()), log)
    stored = diff([w.status() for w in workers.values()], _activation_plan(n_workers, 1), routing={}).record
    log.record_plan(stored)  # as the plan API stores it
    start = time.perf_counter()
    thread = threading.Thread(target=executor.execute, args=(stored,), kwargs={"routing": {}})
    thread.start()
    if not arrived.wait(timeout=60):
        raise RuntimeError("no action reached a worker within 60 s")
    first_s = time.perf_counter() - start
    thread.join()
    return {"workers": n_workers, "first_action_s": first_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (64, 512) if args.quick else (64, 512, 2048)
    results: dict[str, object] = {"diff": [bench_diff(g, 3 if args.quick else 5) for g in sizes],
                                  "churn": bench_churn(256)}
    serial_s, n = _run(64, 4, 0.02, 1, InMemoryActionLog())
    parallel_s, _ = _run(64, 4, 0.02, 16, InMemoryActionLog())
    results["throughput"] = {"actions": n, "worker_latency_s": 0.02, "serial_s": serial_s,
                             "concurrency_16_s": parallel_s}
    with tempfile.TemporaryDirectory() as tmp:
        mem_s, n = _run(16, 16, 0.0, 16, InMemoryActionLog())
        sql = _sql_log(Path(tmp))
        sql_s = _run(16, 16, 0.0, 16, sql)[0] if sql is not None else float("nan")
        results["log"] = {"actions": n, "in_memory_actions_per_s": n / mem_s, "sqlite_actions_per_s": n / sql_s}
        results["first_action"] = bench_first_action(Path(tmp), 64)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "executors.json").write_text(json.dumps(results, indent=2))
    _print(results)


def _print(results: dict) -> None:
    table = Table(title="executors (bench/executors.py)")
    for column in ("measure", "fleetwise", "baseline", "note"):
        table.add_column(column)
    for row in results["diff"]:
        table.add_row(f"diff, {row['gpus']} GPUs", f"{row['median_s'] * 1e3:.1f} ms", "—",
                      f"{row['actions']} actions")
    churn = results["churn"]
    table.add_row("actions for a noise-only replan", str(churn["actions_damped"]), str(churn["actions_undamped"]),
                  f"{churn['replicas']} replicas; baseline: no damping")
    tp = results["throughput"]
    table.add_row(f"apply {tp['actions']} actions (20 ms each)", f"{tp['concurrency_16_s']:.2f} s",
                  f"{tp['serial_s']:.2f} s", "concurrency 16 vs one at a time")
    log = results["log"]
    table.add_row("actions/s, zero-latency workers", f"{log['sqlite_actions_per_s']:.0f} (SQLite log)",
                  f"{log['in_memory_actions_per_s']:.0f} (in memory)", "durable log cost")
    first = results["first_action"]
    if "first_action_s" in first:
        table.add_row("stored plan → first action", f"{first['first_action_s'] * 1e3:.1f} ms", "—",
                      f"{first['workers']} workers observed; target ≤ 50 ms")
    Console().print(table)


if __name__ == "__main__":
    main()
