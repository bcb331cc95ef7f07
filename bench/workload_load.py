"""Workload loading and synthesis speed, against plain baselines measured in the same run.

    python bench/workload_load.py              # everything, including 14 days of ServeGen m-large (≈ 237 M requests)
    python bench/workload_load.py --days 1     # a shorter synthesis run

Writes bench/results/workload_load.json and prints a Rich table. Baselines: pandas' `read_csv` without any
validation and Python's `csv` module (loading); a per-(client, window) loop with one numpy draw per segment and one
final argsort (synthesis). The full synthesis runs in a child process so its peak memory is its own, and checks
that per-window counts match the source (z-scores with the variance implied by each window's CV).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.requests import RequestTable
from workloads.arrivals import moment_match
from workloads.azure import read_azure
from workloads.canonical import read_canonical, write_canonical
from workloads.lengths import AZURE_CONV_LENGTHS
from workloads.servegen import ServeGenSet, read_servegen, synthesize

TRACES = ROOT.parent / "shared" / "data" / "traces"
AZURE_CONV = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
M_LARGE = TRACES / "servegen" / "language" / "m-large"
RESULTS = ROOT / "bench" / "results" / "workload_load.json"


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time of `repeat` runs (the machine is shared; the minimum is the least disturbed)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def million_rows(path: Path) -> RequestTable:
    rng = np.random.default_rng(0)
    n = 1_000_000
    table = RequestTable.from_columns(
        arrival_s=np.cumsum(rng.exponential(0.01, n)), model_idx=rng.integers(0, 50, n), slo_idx=rng.integers(0, 3, n),
        prompt_tokens=rng.integers(1, 8000, n), output_tokens=rng.integers(1, 1000, n),
        model_names=[f"model-{i}" for i in range(50)], slo_names=["interactive", "standard", "batch"],
    )
    write_canonical(table, path)
    return table


def csv_module_read(path: Path) -> int:
    with path.open(newline="") as f:
        rows = [(float(r[0]), r[1], r[2], int(r[3]), int(r[4])) for r in list(csv.reader(f))[1:]]
    return len(rows)


def load_rows(tmp: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    path = tmp / "million.csv"
    t_write, _ = timed(lambda: million_rows(path), repeat=1)
    t_ours, table = timed(lambda: read_canonical(path))
    t_pandas, _ = timed(lambda: pd.read_csv(path))
    t_csv, _ = timed(lambda: csv_module_read(path), repeat=1)
    rows += [
        {"case": "canonical CSV, 1 M rows", "impl": "read_canonical (validated)", "seconds": t_ours, "rows": len(table)},
        {"case": "canonical CSV, 1 M rows", "impl": "baseline: pandas.read_csv, no checks", "seconds": t_pandas,
         "rows": len(table)},
        {"case": "canonical CSV, 1 M rows", "impl": "baseline: csv module", "seconds": t_csv, "rows": len(table)},
        {"case": "canonical CSV, 1 M rows", "impl": "write_canonical", "seconds": t_write, "rows": len(table)},
    ]
    if AZURE_CONV.exists():
        t_ours, conv = timed(lambda: read_azure(AZURE_CONV))
        t_base, _ = timed(lambda: pd.to_datetime(pd.read_csv(AZURE_CONV)["TIMESTAMP"], format="ISO8601"))
        rows += [{"case": "Azure conv (19,366 rows)", "impl": "read_azure", "seconds": t_ours, "rows": len(conv)},
                 {"case": "Azure conv (19,366 rows)", "impl": "baseline: pandas read + to_datetime",
                  "seconds": t_base, "rows": len(conv)}]
    if M_LARGE.exists():
        t_ours, sg = timed(lambda: read_servegen(M_LARGE))
        files = sorted(M_LARGE.glob("chunk-*-trace.csv"))
        t_base, _ = timed(lambda: [pd.read_csv(f, header=None) for f in files])
        cells = sg.num_clients * sg.num_windows
        rows += [{"case": "ServeGen m-large (162 files)", "impl": "read_servegen", "seconds": t_ours, "rows": cells},
                 {"case": "ServeGen m-large (162 files)", "impl": "baseline: pandas per file, no checks",
                  "seconds": t_base, "rows": cells}]
    return rows


def naive_synthesis(sg: ServeGenSet, num_windows: int, seed: int) -> int:
    """The obvious implementation: one numpy draw per (client, window), then one argsort of everything."""
    rng = np.random.default_rng(seed)
    shape, scale = moment_match(sg.family, sg.rate_per_s, sg.cv)
    times, owners = [], []
    for w in range(num_windows):
        for c in np.flatnonzero(sg.rate_per_s[:, w] > 0):
            n = int(sg.rate_per_s[c, w] * sg.window_s * 1.2 + 20)
            k, lam = shape[c, w], scale[c, w]
            gaps = rng.gamma(k, lam, n) if sg.family[c, w] == 1 else lam * rng.weibull(k, n)
            t = sg.window_start_s[w] + rng.random() * gaps[0] + np.cumsum(gaps)
            t = t[t < sg.window_start_s[w] + sg.window_s]
            times.append(t)
            owners.append(np.full(t.shape[0], c, np.int32))
    arrival, owner = np.concatenate(times), np.concatenate(owners)
    order = np.argsort(arrival, kind="stable")
    return int(arrival[order].shape[0] + owner[order].shape[0] * 0)


def window_z(sg: ServeGenSet, table: RequestTable) -> dict[str, float]:
    """Per-window z-scores of the synthesised counts against rate·window (variance rate·window·cv²)."""
    window = np.minimum((table.arrival_s // sg.window_s).astype(np.int64), sg.num_windows - 1)
    counts = np.bincount(window, minlength=sg.num_windows)[: sg.num_windows]
    mean = (sg.rate_per_s * sg.window_s).sum(axis=0)
    var = (sg.rate_per_s * sg.window_s * sg.cv**2).sum(axis=0)
    live = mean > 0
    z = (counts[live] - mean[live]) / np.sqrt(var[live])
    return {"windows": int(live.sum()), "mean_z": float(z.mean()), "mean_z2": float(np.mean(z**2)),
            "max_abs_z": float(np.abs(z).max()), "requests": int(counts.sum()), "expected": float(mean.sum())}


def synthesis_child(days: float, queue: mp.Queue) -> None:
    sg = read_servegen(M_LARGE)
    end_s = days * 86400
    cpu0, start = time.process_time(), time.perf_counter()
    table = synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=0, end_s=end_s)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    windows = round(end_s / sg.window_s)
    cut = ServeGenSet(sg.name, sg.clients, sg.window_s, sg.window_start_s[:windows], sg.rate_per_s[:, :windows],
                      sg.cv[:, :windows], sg.family[:, :windows], sg.param1[:, :windows], sg.param2[:, :windows])
    queue.put({"days": days, "models": len(table.model_names), "requests": len(table), "seconds": wall,
               "cpu_seconds": cpu, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "table_gib": sum(a.nbytes for a in (table.arrival_s, table.model_idx, table.slo_idx,
                                                   table.prompt_tokens, table.output_tokens, table.request_id)) / 2**30,
               "z": window_z(cut, table)})


def synthesis_rows(days: float) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if not M_LARGE.exists():
        return [], None
    queue: mp.Queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=synthesis_child, args=(days, queue))
    child.start()
    full = queue.get()
    child.join()
    sg = read_servegen(M_LARGE)
    base_windows = 18  # three hours: enough to time the loop, extrapolated per request
    t_naive, count = timed(lambda: naive_synthesis(sg, base_windows, 0), repeat=1)
    t_ours, ours = timed(lambda: synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=0, end_s=base_windows * 600), repeat=1)
    case = "m-large → 162 models, 3 h (≈ 2 M requests)"
    rows = [
        {"case": case, "impl": "synthesize", "seconds": t_ours, "rows": len(ours)},
        {"case": case, "impl": "baseline: per-segment loop + argsort (no lengths)", "seconds": t_naive, "rows": count},
        {"case": f"m-large → 162 models, {days:g} days", "impl": "synthesize (child process)",
         "seconds": full["seconds"], "rows": full["requests"]},
    ]
    return rows, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=14.0, help="Days of m-large to synthesise (≤ 14).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = load_rows(Path(tmp))
    synth, full = synthesis_rows(args.days)
    rows += synth
    for row in rows:
        row["ns_per_row"] = row["seconds"] / row["rows"] * 1e9
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "full_synthesis": full}, indent=2))
    table = Table(title="Workload loading and synthesis (best of 3 where repeated)", title_justify="left")
    for col in ("case", "implementation", "seconds", "rows", "ns/row"):
        table.add_column(col, justify="left" if col in ("case", "implementation") else "right")
    for row in rows:
        table.add_row(row["case"], row["impl"], f"{row['seconds']:.3f}", f"{row['rows']:,}",
                      f"{row['ns_per_row']:,.0f}")
    console = Console()
    console.print(table)
    if full is not None:
        z = full["z"]
        console.print(f"full run: {full['requests']:,} requests for {full['models']} models in {full['seconds']:.1f} s "
                      f"wall ({full['cpu_seconds']:.1f} s CPU), peak RSS {full['peak_rss_gib']:.1f} GiB "
                      f"(table {full['table_gib']:.1f} GiB); per-window z over {z['windows']} windows: mean "
                      f"{z['mean_z']:+.3f}, mean z² {z['mean_z2']:.3f}, max |z| {z['max_abs_z']:.2f}; "
                      f"{z['requests']:,} requests vs {z['expected']:,.0f} expected")
    console.print(f"results: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
