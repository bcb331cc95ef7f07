"""The what-if report: the JSON other tools read, and the Rich tables people read.

Report JSON (keys kept stable; see docs/whatif.md):

    {"config": {...WhatIfConfig...},
     "policies": {"<policy>": {"slo_attainment": f, "ttft_attainment": f, "tpot_attainment": f,
                               "per_class": {"<class>": {"slo_attainment": f, ...}}, "per_model": {...},
                               "ttft_s": {"p50": f, "p99": f}, "tpot_s": {"p50": f, "p99": f},
                               "e2e_s": {"p50": f, "p99": f}, "goodput_tokens_per_s": f,
                               "gpu_hours": f, "cost_usd": f, "requests": {"total": n, "completed": n, "dropped": n},
                               "dropped_by_reason": {...}, "actions": {"<kind>": n}, "plans": n, "wall_s": f,
                               "timeline": {"window_s": f, "t_s": [...], "slo_attainment": [...],
                                            "requests": [...], "gpus_active": [...]}}},
     "sweep": {"parameter": "rate", "values": [...], "runs": [{"value": v, "policies": {...}}, ...]}}

Attainment is a fraction of all requests: dropped requests count as misses. With a sweep, `policies` holds the
run nearest to the nominal load (value 1.0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

Figures = dict[str, Any]  # one policy's figures (the "policies" entry)
Report = dict[str, Any]


def build_report(config: dict[str, Any], runs: dict[float, dict[str, Figures]], sweep: dict[str, Any] | None,
                 *, wall_s: float) -> Report:
    """Assemble the report from {sweep value (1.0 without a sweep): {policy: figures}}."""
    nominal = min(runs, key=lambda v: abs(v - 1.0))
    report: Report = {"config": config, "policies": runs[nominal], "wall_s": round(wall_s, 3)}
    if sweep is not None:
        report["sweep"] = {**sweep, "runs": [{"value": v, "policies": runs[v]} for v in sorted(runs)]}
    return report


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def comparison_table(report: Report, *, title: str = "What-if comparison") -> Table:
    """Policies side by side (one column each, so it fits a terminal): attainment overall, of TTFT, of TPOT and
    per class; latency percentiles; goodput; GPU-hours and cost; requests; actions. The best value is green."""
    policies: dict[str, Figures] = report["policies"]
    names = list(policies)
    classes = list(dict.fromkeys(c for f in policies.values() for c in f.get("per_class", {})))
    t = Table(title=title, title_justify="left")
    t.add_column("", style="bold")
    for name in names:
        t.add_column(name, justify="right")
    rows: list[tuple[str, list[float | None], str, int]] = [  # label, values, format, +1 higher / −1 lower better
        ("SLO attainment", [f["slo_attainment"] for f in policies.values()], "pct", 1),
        ("  TTFT met", [f["ttft_attainment"] for f in policies.values()], "pct", 1),
        ("  TPOT met", [f["tpot_attainment"] for f in policies.values()], "pct", 1),
        *[(f"  class {c}", [f["per_class"].get(c, {}).get("slo_attainment") for f in policies.values()], "pct", 1)
          for c in classes],
        ("TTFT p50 (s)", [f["ttft_s"]["p50"] for f in policies.values()], "s", -1),
        ("TTFT p99 (s)", [f["ttft_s"]["p99"] for f in policies.values()], "s", -1),
        ("TPOT p50 (ms)", [f["tpot_s"]["p50"] for f in policies.values()], "ms", -1),
        ("TPOT p99 (ms)", [f["tpot_s"]["p99"] for f in policies.values()], "ms", -1),
        ("goodput (tok/s)", [f["goodput_tokens_per_s"] for f in policies.values()], "int", 1),
        ("GPU-hours", [f["gpu_hours"] for f in policies.values()], "2f", -1),
        ("cost (USD)", [f["cost_usd"] for f in policies.values()], "2f", -1),
        ("completed", [f["requests"]["completed"] for f in policies.values()], "int", 1),
        ("dropped", [f["requests"]["dropped"] for f in policies.values()], "int", -1),
        ("actions", [sum(f["actions"].values()) for f in policies.values()], "int", 0),
        ("plans", [f.get("plans") for f in policies.values()], "int", 0),
        ("simulation wall (s)", [f["wall_s"] for f in policies.values()], "1f", 0),
    ]
    for label, values, fmt, better in rows:
        known = [v for v in values if v is not None]
        best = (max(known) if better > 0 else min(known)) if known and better else None
        cells = [_fmt(v, fmt) for v in values]
        if best is not None and len(set(known)) > 1:
            cells = [f"[green]{c}[/]" if v == best else c for c, v in zip(cells, values)]
        t.add_row(label, *cells)
    requests = next(iter(policies.values()))["requests"]["total"] if policies else 0
    removed = max((f.get("gpus_removed", 0) for f in policies.values()), default=0)
    spot = f"; {removed} GPUs removed by the spot pools' availability traces" if removed else ""
    t.caption = (f"{requests:,} requests{spot}; attainment counts dropped requests as misses; latency percentiles "
                 f"over completed requests; green: best")
    return t


def sweep_table(report: Report) -> Table:
    """SLO attainment and cost of every policy at every sweep point (rows: load; columns: policies)."""
    sweep = report["sweep"]
    policies = list(report["policies"])
    t = Table(title=f"Load sweep ({sweep['parameter']} × nominal): SLO attainment · cost", title_justify="left")
    t.add_column(sweep["parameter"], justify="right", style="bold")
    for p in policies:
        t.add_column(p, justify="right")
    for run in sweep["runs"]:
        best = max(run["policies"][p]["slo_attainment"] for p in policies)
        cells = []
        for p in policies:
            f = run["policies"][p]
            cell = f"{_pct(f['slo_attainment'])} · ${f['cost_usd']:.2f}"
            cells.append(f"[green]{cell}[/]" if f["slo_attainment"] == best and len(policies) > 1 else cell)
        t.add_row(f"{run['value']:g}", *cells)
    return t


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt(x: float | None, fmt: str) -> str:
    if x is None:
        return "-"
    return {"pct": lambda: _pct(x), "s": lambda: f"{x:.3f}", "ms": lambda: f"{1000 * x:.1f}",
            "int": lambda: f"{x:,.0f}", "2f": lambda: f"{x:.2f}", "1f": lambda: f"{x:.1f}"}[fmt]()
