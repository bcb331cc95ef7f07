"""Simulator fidelity: one small trace replayed on a real local worker and on the simulator's SimulatedWorker.

    python bench/sim_fidelity.py [--arch Bench-Llama-4L] [--requests 80] [--rate 6] [--replays 3]
                                 [--profile PROFILE.yaml] [--threads 1]

1. Profile: the worker's latency model, fitted the way `fleetwise profile` fits it (`workers.profile`, same engine
   configuration as the replay: iterations over a grid and a served phase of synthetic Poisson traffic — one
   round of both before each replay, fitted on all rounds — then the per-request intake `admit_s` through the
   submit path), or read from `--profile` (a YAML written by `fleetwise profile`). Never fitted on the replays.
2. Trace: a slice of the Azure LLM conversation trace (Splitwise, ISCA'24), lengths scaled to a 1,024-token context
   (prompts ÷ 8, outputs ÷ 4, clipped), arrivals rescaled to `--rate` requests/s; a synthetic Poisson trace when
   ../shared/data/traces is absent.
3. Real: the trace replayed in wall-clock time on an `Engine` (CPU, one torch thread) stepped by its `EngineLoop`,
   each request submitted from the replay thread as a client would. TTFT from the `submit` call to the first token
   reaching the request's handle, TPOT from the first to the last token's delivery (the engine's own clock, which
   starts a request once `submit` holds the engine lock, is recorded beside). `--replays` times; each percentile
   is the median over the replays, since other load on a shared machine only ever slows one replay down.
4. Simulated: `FleetSimulation` of a one-GPU fleet (an inline "CPU" GPU type) with the static planner, the same
   scheduler limits, page and block sizes, and the fitted profile in its LatencyBook.

The default model, Bench-Llama-4L (4 layers, hidden 256, 3.1 M parameters, defined here), has decode iterations of
~3–9 ms and prefills of tens of ms on one core, so that Python overhead and OS jitter (~0.1–1 ms per iteration on
a shared machine) are a small part of each; Tiny-Llama-2L's ~1 ms iterations are mostly that noise.

Targets: p50 TTFT and TPOT within 10 %, p99 within 20 % (relative to the real worker). Writes
bench/results/sim_fidelity.json (and the profile it used, sim_fidelity_profile.yaml) and prints a Rich table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.catalog import MODEL_CATALOG, ModelArch, llama_param_count
from core.fleet import FleetSpec
from core.latency import LatencyBook, LatencyModel, load_profiles, save_profiles
from core.requests import Request, RequestTable
from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from simulator.planners import StaticPlanner
from workers.control import EngineLoop
from workers.engine import Engine, EngineConfig
from workers.handles import REPLAY, RequestHandle
from workers.profile import ProfileGrid, ServedLoad, fit_profile, measure_round
from workers.residency import ModelSource
from workers.scheduler import SchedulerConfig

RESULTS = ROOT / "bench" / "results"
AZURE_CONV = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"


def _bench_arch() -> ModelArch:
    """Four Llama layers of width 256 (GQA 8:2, SwiGLU 768, the byte vocabulary), fp32: 3.1 M parameters."""
    shape = {"name": "Bench-Llama-4L", "num_layers": 4, "hidden_size": 256, "num_heads": 8, "num_kv_heads": 2,
             "head_dim": 32, "intermediate_size": 768, "vocab_size": 259, "max_context_tokens": 1024,
             "dtype_bytes": 4, "rope_theta": 10000.0}
    return ModelArch(**shape, params_b=llama_param_count(ModelArch(**shape, params_b=1.0)) / 1e9)


BENCH_ARCH = _bench_arch()
ARCHS = {BENCH_ARCH.name: BENCH_ARCH, "Tiny-Llama-2L": MODEL_CATALOG["Tiny-Llama-2L"]}
MODEL = "bench"
PAGE_BYTES = 256 * 1024
KV_PAGES = 256
SCHED = SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=32)
TARGETS = {"p50": 0.10, "p99": 0.20}


def engine(arch: ModelArch) -> Engine:
    config = EngineConfig(worker_id="cpu/0", pool="cpu", gpu_type="CPU", kv_pages=KV_PAGES, page_bytes=PAGE_BYTES,
                          max_num_batched_tokens=SCHED.max_num_batched_tokens, max_num_seqs=SCHED.max_num_seqs)
    return Engine(config, [ModelSource(MODEL, arch)])


def trace(n: int, rate_per_s: float, seed: int) -> tuple[RequestTable, str]:
    """`n` requests at `rate_per_s` on average, lengths that fit a 1,024-token context."""
    if AZURE_CONV.exists():
        from workloads.azure import read_azure

        full = read_azure(AZURE_CONV, model=MODEL, slo_class="interactive")
        part = full.take(np.arange(1000, 1000 + n))
        arrivals = (part.arrival_s - part.arrival_s[0]) * (n / rate_per_s) / max(part.duration_s, 1e-9)
        prompt, output, source = part.prompt_tokens // 8, part.output_tokens // 4, f"{AZURE_CONV.name}[1000:{1000 + n}]"
    else:
        rng = np.random.default_rng(seed)
        arrivals = np.cumsum(rng.exponential(1 / rate_per_s, n)) - 1 / rate_per_s
        prompt, output = rng.lognormal(np.log(120), 0.8, n), rng.lognormal(np.log(30), 0.7, n)
        source = "synthetic Poisson (shared traces absent)"
    table = RequestTable.from_columns(
        arrival_s=arrivals, model_idx=np.zeros(n), slo_idx=np.zeros(n), model_names=[MODEL],
        slo_names=["interactive"], prompt_tokens=np.clip(prompt, 8, 384).astype(int),
        output_tokens=np.clip(output, 4, 96).astype(int),
    )
    return table, source


class Replay:
    """One replay's per-request latencies: as the client saw them, and by the engine's own clock."""

    def __init__(self, n: int) -> None:
        self.submitted_s = np.full(n, np.nan)
        self.tokens_s: list[list[float]] = [[] for _ in range(n)]
        self.engine_ttft_s = np.full(n, np.nan)

    def listener(self, row: int):
        def on_token(_: RequestHandle, token: int | None) -> None:
            if token is not None:
                self.tokens_s[row].append(time.perf_counter())
        return on_token

    @property
    def ttft_s(self) -> np.ndarray:
        return np.array([t[0] for t in self.tokens_s]) - self.submitted_s

    @property
    def tpot_s(self) -> np.ndarray:
        return np.array([(t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else 0.0 for t in self.tokens_s])


def replay_real(table: RequestTable, arch: ModelArch) -> Replay:
    """Submit each request at its arrival offset in wall-clock time; time every token's delivery."""
    eng = engine(arch)
    eng.activate(MODEL)
    loop = EngineLoop(eng).start()
    # A serving worker is warm: one request first, so that one-time costs (first kernel calls) are not timed.
    warm = eng.submit(Request(-1, 0.0, MODEL, "interactive", 64, 8), REPLAY)[1]
    assert warm is not None and warm.wait(60)
    out = Replay(len(table))
    handles = []
    start = time.monotonic()
    try:
        for row, req in enumerate(table):
            delay = start + req.arrival_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            out.submitted_s[row] = time.perf_counter()
            result, handle = eng.submit(req, REPLAY)
            assert handle is not None, result.message
            handle.subscribe(out.listener(row))  # tokens delivered before this are replayed to it at once
            handles.append(handle)
        for h in handles:
            h.wait()
    finally:
        loop.stop()
    out.engine_ttft_s[:] = [h.ttft_s for h in handles]
    return out


def simulate(table: RequestTable, arch: ModelArch, profile: LatencyModel) -> tuple[np.ndarray, np.ndarray]:
    fleet = FleetSpec.model_validate({
        "apiVersion": "fleetwise/v1", "kind": "Fleet", "metadata": {"name": "fidelity"},
        "spec": {
            "pools": [{"name": "cpu", "count": 1, "gpus_per_node": 1,
                       "gpu": {"name": "CPU", "memory_gib": 4, "hbm_gbps": 20, "peak_tflops": 0.1, "pcie_gbps": 10,
                               "price_per_hour": 0}}],
            "models": [{"name": MODEL, "arch": arch}],
            "slo_classes": [{"name": "interactive", "ttft_s": 2.0, "tpot_s": 0.2}],
        },
    })
    config = SimConfig(page_bytes=PAGE_BYTES, max_block_tokens=16, scheduler=SCHED)
    book = LatencyBook(profiles={(profile.arch, profile.gpu_type, profile.tp): profile})
    result = FleetSimulation(fleet, table, StaticPlanner(), config=config, book=book).run()
    assert result.completed.all(), "every request completes in the simulation"
    return result.ttft_s, result.tpot_s


def compare(real_runs: list[np.ndarray], sim: np.ndarray) -> dict[str, float]:
    """Percentiles of the simulation against the real worker's (the median over its replays)."""
    out: dict[str, float] = {}
    for q in (50, 99):
        per_run = [float(np.percentile(real, q)) for real in real_runs]
        r, s = float(np.median(per_run)), float(np.percentile(sim, q))
        out |= {f"real_p{q}_s": r, f"real_p{q}_runs_s": per_run, f"sim_p{q}_s": s, f"rel_err_p{q}": abs(s - r) / r}
    return out


# The grid spans the replay's operating range: a few concurrent requests, prompts of tens to hundreds.
GRID = ProfileGrid(batch_sizes=(1, 2, 4, 8), prompt_tokens=(32, 128, 384), output_tokens=32, repeats=1)
SERVED_SEED = 101  # the served phase's synthetic load: its own seeds, never the replayed trace


def run_real(table: RequestTable, arch: ModelArch, replays: int, profile_path: Path | None,
             ) -> tuple[list[Replay], LatencyModel]:
    """The replays, and the profile: read from `profile_path`, or measured the way `fleetwise profile` measures
    (on an engine of its own) in one round of the grid before each replay — machine load on a shared host drifts
    over a minute, and the profile should see the load the replays saw, not a moment of its own — and fitted on
    all rounds. The replays are never part of the fit."""
    if profile_path is not None:
        return [replay_real(table, arch) for _ in range(replays)], load_profiles(profile_path)[(arch.name, "CPU", 1)]
    profiling = engine(arch)
    profiling.activate(MODEL)
    samples, real = [], []
    for i in range(replays):
        samples += measure_round(profiling, MODEL, GRID, ServedLoad(seed=SERVED_SEED + i))
        real.append(replay_real(table, arch))
    profile = fit_profile(profiling, MODEL, samples)
    save_profiles(RESULTS / "sim_fidelity_profile.yaml", [profile], meta={"command": "bench/sim_fidelity.py"})
    return real, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default=BENCH_ARCH.name, help="the served model")
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--rate", type=float, default=6.0, help="mean arrival rate, requests/s")
    parser.add_argument("--profile", type=Path, help="a profile YAML from `fleetwise profile` (default: fit one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--replays", type=int, default=3, help="real replays (their median percentile is compared)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    arch = ARCHS[args.arch]
    load_before = os.getloadavg()
    table, source = trace(args.requests, args.rate, args.seed)
    real, profile = run_real(table, arch, args.replays, args.profile)
    sim_ttft, sim_tpot = simulate(table, arch, profile)
    no_intake_ttft = simulate(table, arch, replace(profile, admit_s=0.0))[0]
    rows = {"TTFT": compare([r.ttft_s for r in real], sim_ttft), "TPOT": compare([r.tpot_s for r in real], sim_tpot),
            "TTFT, sim without admit_s": compare([r.ttft_s for r in real], no_intake_ttft),
            "TTFT, engine's clock": compare([r.engine_ttft_s for r in real], sim_ttft)}
    doc = {"command": " ".join(["python bench/sim_fidelity.py", *sys.argv[1:]]), "trace": source, "arch": arch.name,
           "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()}, "cpus": os.cpu_count(),
           "requests": args.requests, "rate_per_s": args.rate, "threads": args.threads, "replays": args.replays,
           "profile": {k: v for k, v in profile.__dict__.items() if k != "fit_error"},
           "profile_fit_error": profile.fit_error.__dict__ if profile.fit_error else None,
           "targets": TARGETS, "results": rows}
    (RESULTS / "sim_fidelity.json").write_text(json.dumps(doc, indent=2, default=str))
    Console(width=120).print(_table(rows, f"{arch.name}, {source}"))


def _table(rows: dict[str, dict[str, float]], source: str) -> Table:
    t = Table(title=f"Simulator vs real worker ({source})", title_justify="left")
    for col in ("metric", "real p50", "sim p50", "err p50", "real p99", "sim p99", "err p99"):
        t.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    for name, r in rows.items():
        cells = []
        for q in (50, 99):
            ok = r[f"rel_err_p{q}"] <= TARGETS[f"p{q}"]
            err = f"[{'green' if ok else 'red'}]{r[f'rel_err_p{q}']:.1%}[/]"
            cells += [f"{r[f'real_p{q}_s'] * 1e3:.1f} ms", f"{r[f'sim_p{q}_s'] * 1e3:.1f} ms", err]
        t.add_row(name, *cells)
    return t


if __name__ == "__main__":
    main()
