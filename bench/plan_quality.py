"""Plan quality of the fleetwise policy against every baseline and the oracle, in one run (issue 5's targets).

    python bench/plan_quality.py [--jobs 2] [--quick]

Every simulation runs the what-if machinery (`controller.whatif`: the same workload preparation, latency book,
policy registry, replan interval of 10 s and seed for every policy), in `--jobs` worker processes. Sections:

- **long tail** — ServeGen `language/m-large` (162 clients as 162 models, lengths from the Azure conversation
  trace) on the 192-H100 fleet (`examples/longtail-h100.yaml`, `examples/workloads/servegen-longtail.yaml`), the
  first `--longtail-s` seconds of 10:00 on day 1. *GPUs needed* = the time-average number of GPUs holding weights
  over the replayed span (the cost a policy chose to pay), counted only for a policy that reaches 99 % attainment.
- **load sweep** — the Azure conversation trace split over `examples/small-hetero.yaml`'s 8 models (interactive,
  standard, batch). `dedicated`'s saturation: the rate scale where its attainment falls to 99 % (linear between the
  last point at or above and the first below, on a grid of scales); then every policy at 0.6×…1.6× of it, each
  point under `--sweep-seeds` workload seeds (the draw of each request's model, class and rate thinning) and
  reported as their mean with the range: one trajectory of re-placements can move a point by several points.
- **oracle gap** — fleetwise's attainment and cost beside the oracle's at every sweep point and on the long tail.
- **stability** — the stationary `examples/workloads/chat-mix.yaml` (constant per-model rates) on small-hetero:
  the share of replicas each fleetwise placement activates or removes, consecutive placements compared.
- **liveput** — `examples/spot-mixed.yaml` (4 A100 on demand + 32 spot V100) under the Parcae p3 trace and a g4dn
  variant (24 spot T4 under the SpotServe trace), each GPU's removals replayed by the simulator: SLO goodput (output
  tokens of requests within SLO) per GPU-hour of fleetwise (liveput), `spotserve` (the same planner with SpotServe's
  reactive controller on the spot pool) and the oracle (true future demand and availability).

Writes bench/results/plan_quality.json and .png and prints a Rich table per section and one of the targets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.whatif.options import WhatIfConfig
from controller.whatif.policies import POLICIES, PolicyContext
from controller.whatif.workload import prepare_workload
from core.fleet import load_fleet
from simulator.availability import spot_replay
from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from simulator.latency import build_latency_book

RESULTS = ROOT / "bench" / "results"
TRACES = ROOT.parent / "shared" / "data" / "traces"
AZURE_CONV = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
EXAMPLES = ROOT / "examples"
POLICY_ORDER = ("dedicated", "muxserve", "qlm", "prism", "fleetwise", "oracle")
REPLAN_S = 10.0  # every policy's periodic tick (the what-if default)
SEED = 0
# Spot segments, replayed from these trace times: Parcae names hours [5.5, 6.5) of p3 "high availability, high
# preemption" (15 removals in its first half hour); the g4dn trace's busiest half hour of removals starts at 3.0 h
# (8 removals, 3 additions, from 10 instances).
SPOT_CASES = {"p3": ("parcae_aws_p3/p3trace.csv", 5.5 * 3600), "g4dn": ("spotserve_aws_g4dn/g4dn.csv", 3.0 * 3600)}


# -- one simulation (runs in a worker process) ------------------------------------------------------------------------
def simulate(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job: {"section", "policy", "fleet", "workload", "rate", "start_s", "duration_s", "split", ...}."""
    started = time.perf_counter()
    fleet_path = job.get("fleet_file") or job["fleet"]
    config = WhatIfConfig(fleet=str(fleet_path), workload=str(job["workload"]), policies=(job["policy"],),
                          rate_scale=job.get("rate", 1.0), start_s=job.get("start_s", 0.0),
                          duration_s=job.get("duration_s"), split_models=job.get("split"), seed=job.get("seed", SEED),
                          replan_interval_s=REPLAN_S)
    fleet = load_fleet(config.fleet)
    table = prepare_workload(config, fleet)
    book = build_latency_book(fleet)
    changes, traces = _availability(fleet, Path(fleet_path).parent, job.get("trace_offset_s"))
    setup = _setup(job["policy"], fleet, book, table, traces, job.get("seed", SEED), job.get("planner_options"))
    sim = FleetSimulation(fleet, table, setup.planner, config=SimConfig(replan_interval_s=REPLAN_S), book=book,
                          scenarios_fn=setup.scenarios_fn, availability=changes)
    moves: list[dict[str, float]] = []
    if job.get("record_moves"):
        _record_moves(setup.planner, moves)
    figures = sim.run().figures()
    figures.pop("per_model", None)  # 162 models × sections: kept out of the JSON
    figures["moves"] = moves
    figures["job_wall_s"] = time.perf_counter() - started
    return {**job, "figures": figures}


def _setup(policy: str, fleet, book, table, traces, seed: int = SEED, options: dict[str, Any] | None = None):
    """The policy's planner from the what-if registry; `options` override FleetwisePlanner fields of fleetwise,
    oracle and spotserve."""
    return POLICIES[policy](PolicyContext(fleet, book, table, seed, availability=traces, planner_options=options or {}))


def _availability(fleet, fleet_dir: Path, offset_s: float | None):
    """Per-GPU changes of every spot pool from trace time `offset_s` on, and each trace on the simulation clock."""
    if offset_s is None:
        return [], {}
    replay = spot_replay(fleet, fleet_dir, offset_s=offset_s, start_s=0.0)
    return replay.changes, replay.on_clock


def _record_moves(planner, moves: list[dict[str, float]]) -> None:
    """Wrap `planner.plan` to record, for every plan after the first, the share of replicas it activates or removes
    (and whether it re-placed)."""
    inner = planner.plan

    def plan(fleet, state, scenarios, budget_s):
        out = inner(fleet, state, scenarios, budget_s)
        if state.current_plan is not None:
            before = {r.replica_id for r in state.current_plan.replicas if r.residency == "active"}
            after = {r.replica_id for r in out.replicas if r.residency == "active"}
            moved = len(before ^ after)
            moves.append({"t_s": state.time_s, "replicas": len(after), "moved": moved,
                          "share": moved / max(len(before), 1),
                          "placement": any(r.startswith("placement:") for r in out.reasons)})
        return out

    planner.plan = plan  # type: ignore[method-assign]


# -- the jobs -----------------------------------------------------------------------------------------------------------
def longtail_jobs(duration_s: float) -> list[dict[str, Any]]:
    return [{"section": "longtail", "policy": p, "fleet": EXAMPLES / "longtail-h100.yaml",
             "workload": EXAMPLES / "workloads" / "servegen-longtail.yaml", "duration_s": duration_s}
            for p in POLICY_ORDER]


def sweep_jobs(section: str, policies: tuple[str, ...], rates: list[float], duration_s: float,
               seeds: tuple[int, ...] = (SEED,)) -> list[dict[str, Any]]:
    """One job per rate × policy × seed (the seed draws each request's model and SLO class from the trace)."""
    return [{"section": section, "policy": p, "fleet": EXAMPLES / "small-hetero.yaml", "workload": AZURE_CONV,
             "split": 8, "rate": round(r, 4), "duration_s": duration_s, "seed": s}
            for r in rates for p in policies for s in seeds]


def stability_jobs(duration_s: float) -> list[dict[str, Any]]:
    return [{"section": "stability", "policy": "fleetwise", "fleet": EXAMPLES / "small-hetero.yaml",
             "workload": EXAMPLES / "workloads" / "chat-mix.yaml", "duration_s": duration_s, "record_moves": True}]


def spot_jobs(duration_s: float, rate: float, fleet_dir: Path) -> list[dict[str, Any]]:
    jobs = []
    for case, (trace, offset) in SPOT_CASES.items():
        fleet_file = _spot_fleet(case, trace, fleet_dir)
        jobs += [{"section": "liveput", "case": case, "policy": p, "fleet": EXAMPLES / "spot-mixed.yaml",
                  "fleet_file": fleet_file, "workload": AZURE_CONV, "rate": rate, "duration_s": duration_s,
                  "trace_offset_s": offset} for p in ("spotserve", "fleetwise", "oracle")]
    return jobs


def _spot_fleet(case: str, trace: str, folder: Path) -> Path:
    """spot-mixed with its spot pool on `trace` (absolute path); for g4dn, 24 T4 instances (NVIDIA T4 datasheet:
    16 GB at 320 GB/s, 65 fp16 TFLOPS; AWS g4dn.xlarge on-demand 0.526 USD/h, spot about 0.16)."""
    spec = yaml.safe_load((EXAMPLES / "spot-mixed.yaml").read_text())
    pool = spec["spec"]["pools"][1]
    pool["availability_trace"] = str(TRACES / trace)
    if case == "g4dn":
        pool.update(name="t4-spot", count=24, price_per_hour=0.16,
                    gpu={"name": "T4-16GB", "memory_gib": 16, "hbm_gbps": 320, "peak_tflops": 65, "pcie_gbps": 16,
                         "price_per_hour": 0.526})
    path = folder / f"spot-{case}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_jobs(jobs: list[dict[str, Any]], processes: int) -> list[dict[str, Any]]:
    """Run the jobs (in `processes` worker processes), longest first, printing each as it ends."""
    from rich.progress import Progress

    order = sorted(jobs, key=lambda j: -(j.get("duration_s") or 0) * (j.get("rate") or 1))
    out = []
    with Progress() as bar, ProcessPoolExecutor(max_workers=processes) as pool:
        task = bar.add_task(f"{len(order)} simulations", total=len(order))
        for result in pool.map(simulate, order):
            out.append(result)
            bar.advance(task)
    return out


def main() -> None:
    from plan_quality_report import report  # tables, targets and plot (bench/plan_quality_report.py)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (the machine has 2 cores)")
    ap.add_argument("--quick", action="store_true", help="short slices: a smoke test, not the figures")
    ap.add_argument("--longtail-s", type=float, default=300.0)
    ap.add_argument("--sweep-s", type=float, default=300.0)
    ap.add_argument("--sweep-seeds", type=int, default=3,
                    help="workload seeds per sweep point (each draws the requests' models and classes anew): one "
                         "trajectory of re-placements can swing a point by several points of attainment")
    ap.add_argument("--spot-s", type=float, default=1800.0)
    ap.add_argument("--spot-rate", type=float, default=2.0, help="rate scale of the Azure trace on the spot fleet")
    ap.add_argument("--surges", choices=("default", "add", "replace"), default="default",
                    help="how fleetwise, oracle and spotserve meet a surge between placements: the planner's default "
                         "(add, except on fleets with spot pools), always add (FleetwisePlanner(surge_add_only=True)) "
                         "or always re-place (surge_add_only=False); docs/optimizers.md, \"Surges\"")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {', '.join(SECTIONS)} (the sweep finds its saturation first)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        sys.exit(f"--sections {args.sections!r}: allowed are {', '.join(SECTIONS)}")
    if not AZURE_CONV.exists():
        sys.exit(f"the shared traces are missing ({TRACES}): nothing to measure")
    scale = 0.2 if args.quick else 1.0
    started = time.perf_counter()
    grid = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]
    with tempfile.TemporaryDirectory() as tmp:
        first = ((sweep_jobs("saturation", ("dedicated",), grid, args.sweep_s * scale) if "sweep" in sections else [])
                 + (longtail_jobs(args.longtail_s * scale) if "longtail" in sections else [])
                 + (stability_jobs(900 * scale) if "stability" in sections else [])
                 + (spot_jobs(args.spot_s * scale, args.spot_rate, Path(tmp)) if "liveput" in sections else []))
        options = {"add": {"surge_add_only": True}, "replace": {"surge_add_only": False}}.get(args.surges)
        for job in first:
            job["planner_options"] = options
        done = run_jobs(first, args.jobs)
        saturation, points = None, []
        if "sweep" in sections:
            saturation = find_saturation([d for d in done if d["section"] == "saturation"])
            points = [round(saturation * f, 3) for f in (0.6, 0.8, 1.0, 1.2, 1.4, 1.5, 1.6)]
            sweep = sweep_jobs("sweep", POLICY_ORDER, points, args.sweep_s * scale, tuple(range(args.sweep_seeds)))
            done += run_jobs([job | {"planner_options": options} for job in sweep], args.jobs)
    results = {"command": "python bench/plan_quality.py" + (" --quick" if args.quick else "")
               + ("" if args.surges == "default" else f" --surges {args.surges}")
               + ("" if sections == set(SECTIONS) else f" --sections {args.sections}"),
               "saturation_rate_scale": saturation, "sweep_points": points, "wall_s": time.perf_counter() - started,
               "args": vars(args), "runs": [_jsonable(d) for d in done]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    # a partial run writes beside the full results, never over them
    stem = "plan_quality" if sections == set(SECTIONS) else "plan_quality_" + "_".join(sorted(sections))
    stem += "" if args.surges == "default" else f"_surges_{args.surges}"
    report(results, RESULTS / f"{stem}.png")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")


SECTIONS = ("sweep", "longtail", "stability", "liveput")


def find_saturation(runs: list[dict[str, Any]], level: float = 0.99) -> float:
    """The rate scale where attainment falls to `level`: linear between the last point at or above it and the first
    below (the largest scale tried when it never falls)."""
    pts = sorted((d["rate"], d["figures"]["slo_attainment"]) for d in runs)
    for (r0, a0), (r1, a1) in itertools.pairwise(pts):
        if a0 >= level > a1:
            return r0 + (a0 - level) / (a0 - a1) * (r1 - r0)
    return pts[0][0] if pts[0][1] < level else pts[-1][0]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


if __name__ == "__main__":
    main()
