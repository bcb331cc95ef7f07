"""Solve times of the fleetwise optimizers against their targets and against naive formulations, in one run.

    python bench/solver_scaling.py [--instances 5] [--quick]

Writes bench/results/solver_scaling.json and .png and prints a Rich table. Rows:
- placement (aggregated counts, LP-guided rounding, MIP polish) at 64 GPUs × 32 models × 16 scenarios (target ≤ 1 s)
  and 512 × 128 × 16 (≤ 10 s), beside a naive per-GPU binary formulation (no aggregation) on the smaller size;
- packing of the placement onto GPUs: first-fit decreasing vs CP-SAT (GPUs used, time);
- queue planner at 200 groups × 32 replicas (≤ 100 ms), beside QLM's position-indexed MILP on 10 groups;
- liveput at 12 intervals × 64 GPUs × 8 models (≤ 1 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizers.instances import random_fleet, random_scenarios  # noqa: E402
from optimizers.liveput import LiveputInput, SpotModel, plan_liveput  # noqa: E402
from optimizers.placement.packing import pack, replica_items  # noqa: E402
from optimizers.placement.problem import build_problem  # noqa: E402
from optimizers.placement.solve import solve_placement  # noqa: E402
from optimizers.queue_milp import solve_positions  # noqa: E402
from optimizers.queues import GroupJob, Server, order_groups  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_s": float(np.median(times)), "p99_s": float(np.percentile(times, 99)), "n": len(times)}


def bench_placement(gpus: int, models: int, scenarios: int, limit_s: float, n: int) -> dict:
    times, gaps, objs = [], [], []
    for seed in range(n):
        fleet = random_fleet(gpus, models, seed=seed)
        problem = build_problem(fleet, random_scenarios(fleet, scenarios, seed=seed))
        start = time.perf_counter()
        res = solve_placement(problem, time_limit_s=limit_s)
        times.append(time.perf_counter() - start)
        gaps.append(res.gap if res.gap is not None else float("nan"))
        objs.append(res.objective_usd)
    return {**_stats(times), "gap_vs_lp_median": float(np.nanmedian(gaps)), "objective_usd_median": float(np.median(objs))}


def bench_naive_placement(gpus: int, models: int, scenarios: int, limit_s: float) -> dict:
    """Per-GPU binaries y[m, g] (a model on a GPU), no aggregation and no KV variables, same scenarios."""
    import pyomo.environ as pyo
    from pyomo.contrib.appsi.solvers import Highs

    fleet = random_fleet(gpus, models, seed=0)
    problem = build_problem(fleet, random_scenarios(fleet, scenarios, seed=0))
    tp1 = {c.model_index: c for c in problem.configs if c.shares_gpus and c.pool_index == 0}
    gpu_set = range(problem.pools[0].num_gpus)
    demand = problem.online_demand()
    start = time.perf_counter()
    m = pyo.ConcreteModel()
    m.y = pyo.Var(list(tp1), gpu_set, domain=pyo.Binary)
    m.u = pyo.Var(range(problem.num_scenarios), list(tp1), domain=pyo.NonNegativeReals)
    m.on = pyo.Var(gpu_set, domain=pyo.Binary)
    m.mem = pyo.Constraint(gpu_set, rule=lambda b, g: sum((tp1[i].weight_gib_per_gpu + tp1[i].kv_min_gib) * b.y[i, g]
                                                          for i in tp1) <= problem.pools[0].usable_gib * b.on[g])
    m.serve = pyo.Constraint(range(problem.num_scenarios), list(tp1), rule=lambda b, s, i: float(demand[s, i]) - b.u[s, i]
                             <= tp1[i].online_rate_max * sum(b.y[i, g] for g in gpu_set))
    hours = problem.horizon_s / 3600
    m.cost = pyo.Objective(expr=sum(problem.pools[0].price_per_hour * hours * m.on[g] for g in gpu_set) + sum(
        float(problem.weights[s]) * 0.02 * problem.horizon_s * m.u[s, i] for s in range(problem.num_scenarios)
        for i in tp1))
    opt = Highs()
    opt.config.time_limit = limit_s
    opt.config.load_solution = False
    res = opt.solve(m)
    return {"time_s": time.perf_counter() - start, "status": str(res.termination_condition).split(".")[-1],
            "objective_usd": res.best_feasible_objective, "bound_usd": res.best_objective_bound,
            "binaries": len(m.y) + len(m.on)}


def bench_packing(gpus: int, models: int) -> dict:
    fleet = random_fleet(gpus, models, seed=0)
    problem = build_problem(fleet, random_scenarios(fleet, 16, seed=0))
    d = solve_placement(problem, time_limit_s=2.0).decision
    items = replica_items(problem, d.replicas, d.kv_gib, d.capacity_rps, {})
    ids = {p.name: p.gpu_ids() for p in fleet.pools}
    out = {}
    for name in ("ffd", "cpsat"):
        start = time.perf_counter()
        try:
            res = pack(problem, items, ids, packer=name, time_limit_s=2.0)
        except Exception as exc:  # noqa: BLE001 — recorded in the results, the other rows still run
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
            continue
        out[name] = {"time_s": time.perf_counter() - start, "gpus_used": res.gpus_used, "dropped": len(res.dropped)}
    return out


def bench_queues(groups: int, replicas: int, n: int) -> dict:
    times, costs, edf = [], [], []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        models = [f"m{i}" for i in range(8)]
        jobs = [GroupJob(f"g{i}", models[i % 8], int(k), k * 220.0, k * 220.0**2, float(rng.uniform(1, 60)),
                         float(4.0 ** -rng.integers(0, 3))) for i, k in enumerate(rng.integers(1, 60, groups))]
        servers = [Server(f"r{j}", models[j % 8], float(rng.uniform(1500, 4000))) for j in range(replicas)]
        _, first = order_groups(jobs, servers, budget_s=0.0)
        start = time.perf_counter()
        _, best = order_groups(jobs, servers, budget_s=0.08)
        times.append(time.perf_counter() - start)
        costs.append(best.cost)
        edf.append(first.cost)
    return {**_stats(times), "expected_misses": float(np.mean(costs)), "edf_expected_misses": float(np.mean(edf))}


def bench_qlm_milp(groups: int) -> dict:
    rng = np.random.default_rng(0)
    jobs = [GroupJob(f"g{i}", "a", 10, 2200.0, 0.0, float(rng.uniform(1, 20)), 1.0) for i in range(groups)]
    start = time.perf_counter()
    order = solve_positions(jobs, Server("r", "a", 3000.0), time_limit_s=30.0)
    return {"time_s": time.perf_counter() - start, "found": order is not None, "groups": groups}


def bench_liveput(intervals: int, gpus: int, models: int, n: int) -> dict:
    times = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        spec = tuple(SpotModel(f"m{i}", (1, 2), (8.0, 17.0), (10.0, 21.0), (3.0, 1.6)) for i in range(models))
        avail = np.clip(np.round(gpus * rng.uniform(0.5, 1.0, (16, intervals))), 0, gpus)
        inp = LiveputInput(gpus, 60.0, spec, np.full(16, 1 / 16), avail, rng.uniform(2, 40, (16, models, intervals)),
                           rng.uniform(0, 10, (16, models, intervals)))
        start = time.perf_counter()
        plan_liveput(inp)
        times.append(time.perf_counter() - start)
    return _stats(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one instance each, skip the large placement")
    args = ap.parse_args()
    n = 1 if args.quick else args.instances
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    steps = {
        "placement_64x32x16": lambda: bench_placement(64, 32, 16, 1.0, n),
        "placement_512x128x16": lambda: bench_placement(512, 128, 16, 8.0, max(1, n // 2)) if not args.quick else {},
        "naive_per_gpu_64x32x16": lambda: bench_naive_placement(64, 32, 16, 10.0),
        "packing_64x32": lambda: bench_packing(64, 32),
        "queues_200x32": lambda: bench_queues(200, 32, n * 4),
        "qlm_position_milp_10": lambda: bench_qlm_milp(10),
        "liveput_12x64x8": lambda: bench_liveput(12, 64, 8, n),
    }
    results = {name: fn() for name, fn in track(list(steps.items()), description="benchmarking")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "solver_scaling.json").write_text(json.dumps(results, indent=2, default=str))
    table = Table(title="solver scaling (seconds)")
    for col in ("case", "median", "p99", "target", "notes"):
        table.add_column(col)
    targets = {"placement_64x32x16": 1.0, "placement_512x128x16": 10.0, "queues_200x32": 0.1, "liveput_12x64x8": 1.0}
    for name, r in results.items():
        if not r:
            continue
        med = r.get("median_s", r.get("time_s"))
        p99 = r.get("p99_s", "")
        notes = {k: v for k, v in r.items() if k not in ("median_s", "p99_s", "time_s", "n")}
        if name == "packing_64x32":
            med, notes = r["ffd"]["time_s"], r
        table.add_row(name, f"{med:.3f}", f"{p99:.3f}" if p99 != "" else "", str(targets.get(name, "")),
                      json.dumps(notes, default=lambda x: round(x, 3) if isinstance(x, float) else str(x))[:110])
    Console().print(table)
    _plot(results)


def _plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in results.items() if v and ("median_s" in v or "time_s" in v)]
    vals = [results[k].get("median_s", results[k].get("time_s")) for k in names]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(names, vals)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (median; log scale)")
    ax.set_title("fleetwise solver scaling vs naive formulations")
    fig.tight_layout()
    fig.savefig(RESULTS / "solver_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
