"""Solve times and solution quality of the fleetwise optimizers against their targets and baselines, in one run.

    python bench/solver_scaling.py [--instances 5] [--quick]

Writes bench/results/solver_scaling.json and .png and prints a Rich table. Rows:
- placement at 64 GPUs × 32 models × 16 scenarios (target ≤ 1 s) beside the same program solved to a 0.2 % gap
  (the reference optimum), and at 512 × 128 × 16 (≤ 10 s); a naive per-GPU binary formulation on the smaller size;
- packing of the placement onto GPUs, first-fit decreasing vs CP-SAT (GPUs, replicas dropped or shrunk, time), on
  the random fleets and on the long-tail example fleet with ServeGen `language/m-large` demand (skipped without
  the trace);
- queue planner at 200 groups × 32 replicas (≤ 100 ms), on dedicated replicas and on replicas that swap models
  (tail models without a replica of their own), expected misses of EDF vs the search; at overload, 400 groups on
  16 replicas, the search with and without its exact windows (at 80 ms, and in the 20 deterministic passes the
  simulator runs) against EDF; the exact order of 10 groups of 3 models on one replica that swaps models
  (`best_order`) against EDF;
- liveput at 12 intervals × 64 GPUs × 8 models (≤ 1 s), its expected value beside the reactive SpotServe choice.
Wall and CPU (process) seconds are both recorded: on a shared machine the solver gets less CPU than wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.fleet import load_fleet
from core.forecast import ScenarioSet
from optimizers.instances import random_fleet, random_scenarios
from optimizers.liveput import (
    LiveputInput,
    SpotModel,
    config_value,
    plan_liveput,
    reactive_config,
    replica_value,
    survivor_pmf,
)
from optimizers.outcome import class_mix
from optimizers.placement.packing import pack, replica_items
from optimizers.placement.problem import PlacementSettings, build_problem
from optimizers.placement.solve import solve_block, solve_placement
from optimizers.queues import (
    GroupJob,
    QueueSettings,
    Server,
    best_order,
    edf_start,
    order_groups,
    server_cost,
)
from optimizers.spot import SpotSettings

RESULTS = ROOT / "bench" / "results"
TRACES = ROOT.parent / "shared" / "data" / "traces"
TARGETS_S = {"placement_64x32x16": 1.0, "placement_512x128x16": 10.0, "queues_200x32": 0.1,
             "queues_200x32_swaps": 0.1, "liveput_12x64x8": 1.0}


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {"median_s": float(np.median(wall)), "p99_s": float(np.percentile(wall, 99)),
            "cpu_median_s": float(np.median(cpu)), "cpu_p99_s": float(np.percentile(cpu, 99)), "n": len(wall)}


def bench_placement(gpus: int, models: int, scenarios: int, limit_s: float, n: int, reference: bool) -> dict:
    warm = random_fleet(16, 4, seed=99)  # first solve pays imports and caches: not part of any instance's time
    solve_placement(build_problem(warm, random_scenarios(warm, 2, seed=99)), time_limit_s=0.5)
    wall, cpu, gaps, excess = [], [], [], []
    for seed in range(n):
        fleet = random_fleet(gpus, models, seed=seed)
        problem = build_problem(fleet, random_scenarios(fleet, scenarios, seed=seed))
        res, w, c = _timed(lambda: solve_placement(problem, time_limit_s=limit_s))  # noqa: B023
        wall.append(w)
        cpu.append(c)
        gaps.append(res.gap if res.gap is not None else float("nan"))
        if reference:
            tight = replace(problem, settings=PlacementSettings(mip_gap=0.002, max_mip_integers=10_000))
            exact = solve_block(tight, time_limit_s=60.0)
            excess.append(res.objective_usd / exact.objective_usd - 1)
    out = {**_stats(wall, cpu), "gap_vs_lp_median": float(np.nanmedian(gaps))}
    if excess:
        out |= {"excess_over_optimum_median": float(np.median(excess)), "excess_over_optimum_max": float(max(excess)),
                "excess_over_optimum": [round(x, 4) for x in excess]}
    return out


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


def longtail_scenarios(fleet, num: int, seed: int) -> ScenarioSet | None:
    """ServeGen language/m-large, one client per model: `num` 10-minute windows drawn at random as equally likely
    scenarios; Azure conv mean lengths (1,155 prompt / 211 output tokens, traces README)."""
    folder = TRACES / "servegen" / "language" / "m-large"
    if not folder.is_dir():
        return None
    from workloads.servegen import read_servegen

    sg = read_servegen(folder)
    windows = np.random.default_rng(seed).choice(sg.num_windows, num, replace=False)
    m = len(fleet.models)
    return ScenarioSet(
        start_s=0.0, interval_s=sg.window_s, models=tuple(fleet.model_names), pools=tuple(p.name for p in fleet.pools),
        slo_classes=tuple(c.name for c in fleet.slo_classes), weights=np.full(num, 1 / num),
        seeds=np.arange(num, dtype=np.int64), demand_rps=sg.rate_per_s[:m, windows].T[:, :, None],
        available_gpus=np.array([[[p.count]] for p in fleet.pools], float).transpose(1, 0, 2).repeat(num, 0),
        class_share=class_mix(fleet), mean_prompt_tokens=np.full(m, 1155.0), mean_output_tokens=np.full(m, 211.0))


def _pack_case(fleet, scenarios, limit_s: float) -> dict:
    problem = build_problem(fleet, scenarios)
    d = solve_placement(problem, time_limit_s=limit_s).decision
    items = replica_items(problem, d.replicas, d.kv_gib, d.capacity_rps, {})
    ids = {p.name: p.gpu_ids() for p in fleet.pools}
    out = {"replicas": len(items), "program_gpus": int(d.gpus_used(problem).sum())}
    for name in ("ffd", "cpsat"):
        res, w, _ = _timed(lambda: pack(problem, items, ids, packer=name, time_limit_s=2.0))  # noqa: B023
        out[name] = {"time_s": w, "gpus_used": res.gpus_used, "dropped": len(res.dropped), "shrunk": res.num_shrunk}
    return out


def bench_packing(quick: bool) -> dict:
    cases = {f"random_64x32_s{s}": (64, 32, s, 2.0) for s in range(1 if quick else 3)}
    if not quick:
        cases["random_512x128_s0"] = (512, 128, 0, 8.0)
    out = {}
    for name, (gpus, models, seed, limit) in cases.items():
        fleet = random_fleet(gpus, models, seed=seed)
        out[name] = _pack_case(fleet, random_scenarios(fleet, 16, seed=seed), limit)
    fleet = load_fleet(ROOT / "examples" / "longtail-h100.yaml")
    scenarios = longtail_scenarios(fleet, 16, seed=0)
    if scenarios is not None:
        out["longtail_h100_servegen"] = _pack_case(fleet, scenarios, 10.0)
    return out


def queue_instance(seed: int, swaps: bool) -> tuple[list[GroupJob], list[Server]]:
    """200 groups on 32 replicas of 8 models. With `swaps`, 4 more (tail) models have no replica, so their groups
    wait on replicas that swap models (2 s each), and deadlines are tighter (1–15 s instead of 1–60 s)."""
    rng = np.random.default_rng(seed)
    num_models = 12 if swaps else 8
    models = [f"m{i}" for i in range(num_models)]
    jobs = [GroupJob(f"g{i}", models[i % num_models], int(k), k * 220.0, k * 220.0**2,
                     float(rng.uniform(1, 15 if swaps else 60)), float(4.0 ** -rng.integers(0, 3)))
            for i, k in enumerate(rng.integers(1, 60, 200))]
    servers = [Server(f"r{j}", models[j % 8], float(rng.uniform(1500, 4000)), swap_s=2.0 if swaps else 0.0)
               for j in range(32)]
    return jobs, servers


def bench_queues(instances, variants: dict[str, QueueSettings] | None = None) -> dict:
    """The search at the 80 ms budget on each (jobs, servers) instance beside EDF, and each of `variants` (other
    settings of the search) on the same instances."""
    wall, cpu, costs, edf = [], [], [], []
    other: dict[str, list[float]] = {name: [] for name in variants or {}}
    for jobs, servers in instances:
        _, first = order_groups(jobs, servers, budget_s=0.0)
        (_, best), w, c = _timed(lambda: order_groups(jobs, servers, budget_s=0.08))  # noqa: B023
        wall.append(w)
        cpu.append(c)
        costs.append(best.cost)
        edf.append(first.cost)
        for name, settings in (variants or {}).items():
            other[name].append(order_groups(jobs, servers, budget_s=0.08, settings=settings)[1].cost)
    return {**_stats(wall, cpu), "expected_misses": float(np.mean(costs)), "edf_expected_misses": float(np.mean(edf)),
            **{f"{name}_expected_misses": float(np.mean(v)) for name, v in other.items()}}


def crowded_instance(seed: int) -> tuple[list[GroupJob], list[Server]]:
    """Overload: 400 groups on 16 dedicated replicas of 8 models (25 groups a replica), deadlines 1–40 s."""
    rng = np.random.default_rng(seed)
    models = [f"m{i}" for i in range(8)]
    jobs = [GroupJob(f"g{i}", models[i % 8], int(k), k * 220.0, k * 220.0**2, float(rng.uniform(1, 40)),
                     float(4.0 ** -rng.integers(0, 3)))
            for i, k in enumerate(rng.integers(1, 60, 400))]
    servers = [Server(f"r{j}", models[j % 8], float(rng.uniform(1500, 4000))) for j in range(16)]
    return jobs, servers


def crowded_variants() -> dict[str, QueueSettings]:
    """The search without its exact windows, and both in the 20 deterministic passes the simulator runs."""
    plain = QueueSettings(window_groups=0)
    return {"no_windows": plain, "passes": QueueSettings(deterministic=True),
            "passes_no_windows": replace(plain, deterministic=True)}


def bench_exact_order(groups: int, n: int) -> dict:
    """`best_order` on one replica that swaps models: `groups` groups of 3 models, tight deadlines."""
    wall, cpu, exact, edf = [], [], [], []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        jobs = [GroupJob(f"g{i}", "abc"[i % 3], k, k * 220.0, k * 220.0**2, float(rng.uniform(1, 15)), 1.0)
                for i, k in enumerate(rng.integers(1, 30, groups))]
        server = Server("r", "a", 3000.0, swap_s=2.0)
        order, w, c = _timed(lambda: best_order(jobs, server))  # noqa: B023
        wall.append(w)
        cpu.append(c)
        exact.append(server_cost(jobs, server, order, QueueSettings()))
        edf.append(server_cost(jobs, server, edf_start(jobs, [server])[0], QueueSettings()))
    return {**_stats(wall, cpu), "expected_misses": float(np.mean(exact)), "edf_expected_misses": float(np.mean(edf)),
            "groups": groups}


SPOT = SpotSettings()


def bench_liveput(intervals: int, gpus: int, models: int, n: int) -> dict:
    wall, cpu, ours, theirs = [], [], [], []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        spec = tuple(SpotModel(f"m{i}", (1, 2), (8.0, 17.0), (10.0, 21.0), (3.0, 1.6)) for i in range(models))
        avail = np.clip(np.round(gpus * rng.uniform(0.5, 1.0, (16, intervals))), 0, gpus)
        # the loss model the planner uses in serving (`optimizers.spot.SpotSettings`: re-hosting on spare GPUs)
        inp = LiveputInput(gpus, 60.0, spec, np.full(16, 1 / 16), avail, rng.uniform(2, 40, (16, models, intervals)),
                           rng.uniform(0, 10, (16, models, intervals)), reaction_s=SPOT.reaction_s,
                           notice_s=SPOT.notice_s)
        plan, w, c = _timed(lambda: plan_liveput(inp))  # noqa: B023
        wall.append(w)
        cpu.append(c)
        values = [[replica_value(inp, m, o, 0, survivor_pmf(inp, tp, 0)) for o, tp in enumerate(md.tp_options)]
                  for m, md in enumerate(inp.models)]
        ours.append(config_value(values, inp, plan.path[0]))
        theirs.append(config_value(values, inp, reactive_config(inp)))
    return {**_stats(wall, cpu), "first_step_value_usd": float(np.mean(ours)),
            "reactive_value_usd": float(np.mean(theirs))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one instance each, no reference optimum, small cases only")
    args = ap.parse_args()
    n = 1 if args.quick else args.instances
    from rich.progress import track

    steps = {
        "placement_64x32x16": lambda: bench_placement(64, 32, 16, 1.0, n, reference=not args.quick),
        "placement_512x128x16": lambda: bench_placement(512, 128, 16, 8.0, max(1, n // 2), False)
        if not args.quick else {},
        "naive_per_gpu_64x32x16": lambda: bench_naive_placement(64, 32, 16, 10.0),
        "packing": lambda: bench_packing(args.quick),
        "queues_200x32": lambda: bench_queues(queue_instance(s, False) for s in range(n * 4)),
        "queues_200x32_swaps": lambda: bench_queues(queue_instance(s, True) for s in range(n * 4)),
        "queues_400x16_crowded": lambda: bench_queues((crowded_instance(s) for s in range(n * 2)), crowded_variants()),
        "exact_order_10": lambda: bench_exact_order(10, n * 4),
        "liveput_12x64x8": lambda: bench_liveput(12, 64, 8, n),
    }
    results = {name: fn() for name, fn in track(list(steps.items()), description="benchmarking")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "solver_scaling.json").write_text(json.dumps(results, indent=2, default=str))
    print_tables(results)
    plot(results, RESULTS / "solver_scaling.png")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="solver scaling: wall seconds (CPU seconds of this process beside)")
    for col in ("case", "median s", "p99 s", "CPU median / p99 s", "target s", "quality", "baseline (same run)"):
        table.add_column(col)
    p = results["placement_64x32x16"]
    excess = (f"+{100 * p['excess_over_optimum_median']:.1f} % over the optimum (max "
              f"+{100 * p['excess_over_optimum_max']:.1f} %), " if "excess_over_optimum_median" in p else "")
    quality = {
        "placement_64x32x16": (f"{excess}gap to LP {100 * p['gap_vs_lp_median']:.1f} %", ""),
        "liveput_12x64x8": (f"first step worth {results['liveput_12x64x8']['first_step_value_usd']:.1f} USD",
                            f"reactive {results['liveput_12x64x8']['reactive_value_usd']:.1f} USD"),
    }
    if results.get("placement_512x128x16"):
        quality["placement_512x128x16"] = (f"gap to LP {100 * results['placement_512x128x16']['gap_vs_lp_median']:.1f} %", "")
    for name in ("queues_200x32", "queues_200x32_swaps", "exact_order_10"):
        r = results[name]
        quality[name] = (f"{r['expected_misses']:.2f} expected misses", f"EDF {r['edf_expected_misses']:.2f}")
    r = results["queues_400x16_crowded"]
    quality["queues_400x16_crowded"] = (  # 80 ms budget (20 deterministic passes)
        f"{r['expected_misses']:.0f} expected misses ({r['passes_expected_misses']:.0f} in 20 passes)",
        (f"no windows {r['no_windows_expected_misses']:.0f} ({r['passes_no_windows_expected_misses']:.0f}), "
         f"EDF {r['edf_expected_misses']:.0f}"))
    naive = results["naive_per_gpu_64x32x16"]
    quality["placement_64x32x16"] = (quality["placement_64x32x16"][0],
                                     f"per-GPU binaries: {naive['time_s']:.1f} s, {naive['status']}")
    for name, r in results.items():
        if not r or "median_s" not in r:
            continue
        q, base = quality.get(name, ("", ""))
        table.add_row(name, _fmt(r["median_s"]), _fmt(r["p99_s"]), f"{_fmt(r['cpu_median_s'])} / {_fmt(r['cpu_p99_s'])}",
                      str(TARGETS_S.get(name, "")), q, base)
    packing = Table(title="packing onto GPUs: first-fit decreasing vs CP-SAT (GPUs / dropped / shrunk / seconds)")
    for col in ("case", "replicas", "program's GPUs", "FFD", "CP-SAT"):
        packing.add_column(col)
    for name, r in results["packing"].items():
        cell = lambda x: f"{x['gpus_used']} / {x['dropped']} / {x['shrunk']} / {x['time_s']:.3f}"
        packing.add_row(name, str(r["replicas"]), str(r["program_gpus"]), cell(r["ffd"]), cell(r["cpsat"]))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(packing)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    _plot_times(axes[0, 0], results)
    _plot_placement(axes[0, 1], results["placement_64x32x16"])
    _plot_packing(axes[1, 0], results["packing"])
    _plot_queues(axes[1, 1], results)
    fig.suptitle("fleetwise optimizers: solve time and quality (bench/solver_scaling.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_times(ax, results: dict) -> None:
    names = [k for k in TARGETS_S if results.get(k)]
    y = np.arange(len(names))
    med = np.array([results[k]["median_s"] for k in names])
    p99 = np.array([results[k]["p99_s"] for k in names])
    target = np.array([TARGETS_S[k] for k in names])
    ax.barh(y, med, height=0.5, color=np.where(p99 <= target, "tab:blue", "tab:red"), label="median (red: p99 > target)")
    ax.scatter(p99, y, color="black", marker="|", s=300, label="p99", zorder=3)
    ax.scatter(target, y, color="tab:red", marker="D", label="target", zorder=3)
    for yi, m, p, t in zip(y, med, p99, target):
        ax.annotate(f"median {m:.3g} s · p99 {p:.3g} s", (max(m, p, t), yi), xytext=(8, -3), textcoords="offset points",
                    fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xscale("log")
    ax.set_xlim(min(med.min(), 1e-3) / 2, target.max() * 40)
    ax.set_xlabel("wall seconds (log scale)")
    ax.set_title("solve time against targets")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=3, fontsize=8, frameon=False)


def _plot_placement(ax, r: dict) -> None:
    excess = r.get("excess_over_optimum", [])
    ax.set_title("placement 64 × 32 × 16, 1 s limit: cost above the optimum")
    if not excess:
        ax.text(0.5, 0.5, "no reference optimum (--quick)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    bars = ax.bar(range(len(excess)), [100 * x for x in excess], color="tab:green", label="per instance")
    for b, x in zip(bars, excess):
        ax.annotate(f"{100 * x:.1f} %", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.axhline(100 * r["gap_vs_lp_median"], color="tab:gray", ls="--", label="median gap to the LP bound")
    ax.set_xticks(range(len(excess)), [f"seed {i}" for i in range(len(excess))])
    ax.set_ylabel("% above the optimum (0.2 % MIP gap)")
    ax.legend(fontsize=8)


def _plot_packing(ax, r: dict) -> None:
    names = list(r)
    x = np.arange(len(names))
    for i, (key, label) in enumerate((("program", "program's count"), ("ffd", "first-fit"), ("cpsat", "CP-SAT"))):
        vals = [r[n]["program_gpus"] if key == "program" else r[n][key]["gpus_used"] for n in names]
        bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
    cut = lambda n, key: r[n][key]["dropped"] + r[n][key]["shrunk"]
    ax.set_xticks(x, [f"{n.replace('_', chr(10), 1)}\ncut: {cut(n, 'ffd')} / {cut(n, 'cpsat')}" for n in names],
                  fontsize=8)
    ax.set_ylabel("GPUs used")
    ax.set_ylim(0, max(r[n]["ffd"]["gpus_used"] for n in names) * 1.2)
    ax.set_title("packing (cut: replicas dropped or KV shrunk, first-fit / CP-SAT)")
    ax.legend(fontsize=8)


def _plot_queues(ax, results: dict) -> None:
    names = ["queues_200x32", "queues_200x32_swaps"]
    x = np.arange(len(names))
    edf = [results[n]["edf_expected_misses"] for n in names]
    ours = [results[n]["expected_misses"] for n in names]
    ax.bar(x - 0.2, edf, 0.4, label="EDF", color="tab:gray")
    ax.bar(x + 0.2, ours, 0.4, label="EDF + local search", color="tab:orange")
    for xi, v in zip(list(x - 0.2) + list(x + 0.2), edf + ours):
        ax.annotate(f"{v:.1f}", (xi, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, ["dedicated replicas", "replicas that swap models"])
    ax.set_yscale("log")
    ax.set_ylabel("expected SLO misses (priority-weighted, log)")
    ax.set_title("queue planner, 200 groups × 32 replicas, 80 ms budget")
    ax.legend(fontsize=8)


if __name__ == "__main__":
    main()
