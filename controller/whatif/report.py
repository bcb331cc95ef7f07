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
    """One row per policy: attainment (overall, TTFT, TPOT, per class), latency percentiles, goodput and cost."""
    policies: dict[str, Figures] = report["policies"]
    classes = list(dict.fromkeys(c for f in policies.values() for c in f.get("per_class", {})))
    t = Table(title=title, title_justify="left")
    t.add_column("policy", style="bold")
    for col in ["SLO att.", "TTFT att.", "TPOT att.", *[f"{c} att." for c in classes], "TTFT p50/p99 s",
                "TPOT p50/p99 ms", "goodput tok/s", "GPU-h", "cost $", "done/dropped", "actions", "wall s"]:
        t.add_column(col, justify="right")
    best = max((f["slo_attainment"] for f in policies.values()), default=None)
    for name, f in policies.items():
        att = _pct(f["slo_attainment"])
        t.add_row(
            name, f"[green]{att}[/]" if f["slo_attainment"] == best else att, _pct(f["ttft_attainment"]),
            _pct(f["tpot_attainment"]),
            *[_pct(f["per_class"][c]["slo_attainment"]) if c in f["per_class"] else "-" for c in classes],
            f"{_num(f['ttft_s']['p50'])} / {_num(f['ttft_s']['p99'])}",
            f"{_ms(f['tpot_s']['p50'])} / {_ms(f['tpot_s']['p99'])}",
            f"{f['goodput_tokens_per_s']:,.0f}", f"{f['gpu_hours']:.2f}", f"{f['cost_usd']:.2f}",
            f"{f['requests']['completed']:,}/{f['requests']['dropped']:,}",
            f"{sum(f['actions'].values()):,}", f"{f['wall_s']:.1f}",
        )
    t.caption = "attainment counts dropped requests as misses; TTFT and TPOT percentiles over completed requests"
    return t


def sweep_table(report: Report) -> Table:
    """SLO attainment (and cost) of every policy at every sweep point."""
    sweep = report["sweep"]
    policies = list(report["policies"])
    t = Table(title=f"Load sweep ({sweep['parameter']} × nominal)", title_justify="left")
    t.add_column(sweep["parameter"], justify="right")
    for p in policies:
        t.add_column(f"{p} SLO att.", justify="right")
        t.add_column(f"{p} $", justify="right")
    for run in sweep["runs"]:
        cells = [f"{run['value']:g}"]
        for p in policies:
            f = run["policies"][p]
            cells += [_pct(f["slo_attainment"]), f"{f['cost_usd']:.2f}"]
        t.add_row(*cells)
    return t


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.0f}"
