"""Simulator speed: simulated requests per second of one core, and peak memory on a million-request trace.

    python bench/simulator_speed.py               # moderate, overloaded and time-shared runs, each against its
                                                  # baseline, + 1M
    python bench/simulator_speed.py --no-million  # skip the million-request memory run (~3 minutes)

Setup: a 16 × H100 fleet (two nodes of 8) serving 8 Llama-3.1-8B-sized models; the Azure LLM conversation trace
(Splitwise, ISCA'24; 1,155 prompt / 211 output tokens on average) split over the models by Zipf popularity
(exponent 1, seed 0), 80 % interactive (TTFT 1 s, TPOT 100 ms) and 20 % offline batch; every model placed once by
the static planner (`simulator.planners.StaticPlanner`), shares from the trace. Load levels:

- moderate: the trace's rate × 16 (~90 requests/s; every SLO met, decode batches of ~30);
- overloaded: × 80 (~440 requests/s; queues grow, TTFT in seconds, attainment about half);
- time-shared: 48 models, three on every GPU (they take turns, one model's batch per iteration: MuxServe-style
  co-location), at × 8 (~38 requests/s; every SLO met — at × 16 the most popular model's GPU, which it shares
  with two others, is overloaded).

Each load is simulated twice in the same process, pinned to one core: `fleetwise` (one event per uninterrupted run
of decodes, `SimConfig.run_ahead`) and the baseline, the same simulator with one event per engine iteration (the
usual design of Vidur and splitwise-sim). The two give the same per-request results (tests check it); speed is
requests ÷ CPU seconds of the run (wall seconds are reported too: on a loaded machine they are longer). Targets
(issue 3): ≥ 5,000 requests/s at moderate load and ≥ 1,000 overloaded; splitwise-sim's published figures (~560
and ~56 on two cores; REFERENCES.md) are quoted, not measured. The million-request run (the moderate rate, trace
tiled in time) runs in a child process whose peak RSS must stay under 2 GiB.

Writes `bench/results/simulator_speed.json` and prints a table.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.fleet import FleetSpec
from core.requests import RequestTable
from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from simulator.planners import StaticPlanner

RESULTS = ROOT / "bench" / "results" / "simulator_speed.json"
TRACE = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
TARGETS = {"moderate": 5000.0, "overloaded": 1000.0, "time-shared": 5000.0}
MODELS = {"moderate": 8, "overloaded": 8, "time-shared": 48}  # Llama-3.1-8B-sized models in the fleet
SPLITWISE_SIM = {"moderate": 560.0, "overloaded": 56.0}  # requests/s on two cores, as published (REFERENCES.md)
MAX_RSS_GIB = 2.0
console = Console(width=max(Console().width, 150))  # the table needs ~140 columns; never wrap it

FLEET = {
    "apiVersion": "fleetwise/v1", "kind": "Fleet", "metadata": {"name": "bench-16xh100"},
    "spec": {
        "pools": [{"name": "h100", "gpu": "H100-SXM", "count": 16, "gpus_per_node": 8}],
        "models": [{"name": "m{i}", "arch": "Llama-3.1-8B", "tp_options": [1], "max_context_tokens": 16384,
                    "copies": 8}],  # MODELS[load] copies
        "slo_classes": [{"name": "interactive", "ttft_s": 1.0, "tpot_s": 0.1, "priority": 0},
                        {"name": "batch", "online": False, "priority": 9}],
    },
}


@dataclass(frozen=True)
class Run:
    load: str
    engine: str  # "fleetwise" (runs of decodes) or "per-iteration" (baseline)
    requests: int
    offered_rps: float  # requests per simulated second
    cpu_s: float
    wall_s: float
    events: int
    slo_attainment: float
    ttft_p50_s: float
    ttft_p99_s: float

    @property
    def requests_per_cpu_s(self) -> float:
        return self.requests / self.cpu_s


def fleet(num_models: int = 8) -> FleetSpec:
    spec = {**FLEET["spec"], "models": [{**FLEET["spec"]["models"][0], "copies": num_models}]}
    return FleetSpec.model_validate({**FLEET, "spec": spec})


def workload(rate_factor: float, span_s: float, *, min_requests: int = 0, num_models: int = 8) -> RequestTable:
    """The conversation trace's first `span_s` seconds at `rate_factor` × its rate, repeated in time until it
    holds `min_requests`."""
    from workloads.azure import read_azure
    from workloads.synth import assign_slo_mix, scale_rate, split_models, time_slice

    if not TRACE.exists():
        raise SystemExit(f"the Azure conversation trace is missing ({TRACE}); see ../shared/data/traces/README.md")
    base = scale_rate(time_slice(read_azure(TRACE), 0.0, span_s), rate_factor, seed=0)
    tiles = -(-min_requests // len(base)) if min_requests else 1
    if tiles > 1:
        arrivals = np.concatenate([base.arrival_s + k * span_s for k in range(tiles)])
        base = RequestTable.from_columns(
            arrival_s=arrivals, model_idx=np.tile(base.model_idx, tiles), slo_idx=np.tile(base.slo_idx, tiles),
            prompt_tokens=np.tile(base.prompt_tokens, tiles), output_tokens=np.tile(base.output_tokens, tiles),
            model_names=base.model_names, slo_names=base.slo_names, sort=False)
    names = fleet(num_models).model_names
    split = split_models(base, names, zipf_exponent=1.0, seed=0)
    return assign_slo_mix(split, {"interactive": 0.8, "batch": 0.2}, seed=0)


def simulate(table: RequestTable, *, run_ahead: bool, num_models: int = 8) -> tuple[float, float, dict]:
    shares = {m: float(np.mean(table.model_idx == i)) for i, m in enumerate(table.model_names)}
    sim = FleetSimulation(fleet(num_models), table, StaticPlanner(shares), config=SimConfig(run_ahead=run_ahead))
    cpu, wall = time.process_time(), time.perf_counter()
    figures = sim.run().figures()
    return time.process_time() - cpu, time.perf_counter() - wall, figures


def measure(load: str, rate_factor: float, span_s: float) -> list[Run]:
    table = workload(rate_factor, span_s, num_models=MODELS[load])
    runs = []
    for engine, run_ahead in (("fleetwise", True), ("per-iteration", False)):
        cpu, wall, f = simulate(table, run_ahead=run_ahead, num_models=MODELS[load])
        runs.append(Run(load, engine, len(table), len(table) / table.duration_s, cpu, wall, f["events"],
                        f["slo_attainment"], f["ttft_s"]["p50"], f["ttft_s"]["p99"]))
        console.print(f"  {load:10} {engine:13} {len(table):>8,} requests  {runs[-1].requests_per_cpu_s:>8,.0f} req/s "
                      f"(CPU {cpu:.1f} s, wall {wall:.1f} s)")
    return runs


def million_child() -> None:
    """In a child process: simulate ~1M requests at the moderate rate; print JSON with the peak RSS."""
    table = workload(16.0, 600.0, min_requests=1_000_000)
    cpu = time.process_time()
    _, _, f = simulate(table, run_ahead=True)
    print(json.dumps({"requests": len(table), "cpu_s": time.process_time() - cpu,
                      "completed": f["requests"]["completed"], "dropped": f["requests"]["dropped"],
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def million() -> dict:
    console.print("  million-request run (child process) …")
    out = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(million_run: Annotated[bool, typer.Option("--million/--no-million")] = True,
         child: Annotated[bool, typer.Option("--child", hidden=True)] = False) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    if child:
        million_child()
        return
    console.print("[bold]Simulator speed[/] (16 × H100, 8 or 48 models, Azure conversation trace; one core)")
    runs = measure("moderate", 16.0, 600.0) + measure("overloaded", 80.0, 120.0) + measure("time-shared", 8.0, 600.0)
    big = million() if million_run else None
    report = {
        "command": "python bench/simulator_speed.py" + ("" if million_run else " --no-million"),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "load_average": os.getloadavg()},
        "runs": [{**asdict(r), "requests_per_cpu_s": r.requests_per_cpu_s} for r in runs],
        "targets_requests_per_s": TARGETS, "splitwise_sim_published_requests_per_s": SPLITWISE_SIM,
        "million": big, "million_rss_limit_gib": MAX_RSS_GIB,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    console.print(table(runs, big))
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")


def table(runs: list[Run], big: dict | None) -> Table:
    t = Table(title="Simulated requests per CPU second (one core)", title_justify="left")
    for col in ("load", "simulator", "requests", "offered req/s", "events", "SLO att.", "TTFT p50 s", "req/s (CPU)",
                "req/s (wall)", "vs baseline", "target"):
        t.add_column(col, justify="left" if col in ("load", "simulator") else "right")
    base = {r.load: r for r in runs if r.engine == "per-iteration"}
    for r in runs:
        rate = r.requests_per_cpu_s
        ok = r.engine != "fleetwise" or rate >= TARGETS[r.load]
        t.add_row(r.load, r.engine, f"{r.requests:,}", f"{r.offered_rps:.0f}", f"{r.events:,}",
                  f"{100 * r.slo_attainment:.1f}%", f"{r.ttft_p50_s:.2f}", f"[{'green' if ok else 'red'}]{rate:,.0f}[/]",
                  f"{r.requests / r.wall_s:,.0f}", f"{rate / base[r.load].requests_per_cpu_s:.1f}×",
                  f"≥ {TARGETS[r.load]:,.0f}" if r.engine == "fleetwise" else "")
    for load, rate in SPLITWISE_SIM.items():
        t.add_row(load, "splitwise-sim (published)", "", "", "", "", "", f"{rate:,.0f}", "", "", "")
    if big is not None:
        ok = big["peak_rss_gib"] <= MAX_RSS_GIB
        t.caption = (f"1M-request trace: {big['requests']:,} requests in {big['cpu_s']:.0f} CPU s, peak RSS "
                     f"[{'green' if ok else 'red'}]{big['peak_rss_gib']:.2f} GiB[/] (limit {MAX_RSS_GIB} GiB)")
    return t


if __name__ == "__main__":
    typer.run(main)
