"""Tables, targets and plot of bench/plan_quality.py (see its docstring for what each section measures).

`report(results, png)` prints one Rich table per section and the targets table (every target's figure beside the
baselines measured in the same run, and whether it is met), stores the targets in `results["targets"]` and the
section summaries in `results["summary"]`, and writes the plot.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

POLICIES = ("dedicated", "muxserve", "qlm", "prism", "fleetwise", "oracle")
SPOT_POLICIES = ("spotserve", "fleetwise", "oracle")
console = Console()


def _runs(results: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["section"] == section]


def gpus_needed(figures: dict[str, Any]) -> float:
    """Time-average GPUs holding weights over the replayed span (the timeline's windows of arrival time)."""
    gpus = figures["timeline"]["gpus_active"]
    return float(np.mean(gpus)) if gpus else 0.0


def good_tokens_per_gpu_hour(figures: dict[str, Any]) -> float:
    """SLO goodput per GPU-hour: output tokens of requests within SLO over the GPU-hours billed."""
    return figures["goodput_tokens_per_s"] * figures["sim_span_s"] / max(figures["gpu_hours"], 1e-9)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# -- sections -----------------------------------------------------------------------------------------------------------
def longtail(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    rows = {r["policy"]: r["figures"] for r in _runs(results, "longtail")}
    out = {p: {"attainment": f["slo_attainment"], "gpus_mean": gpus_needed(f),
               "gpus_peak": max(f["timeline"]["gpus_active"] or [0.0]), "gpu_hours": f["gpu_hours"],
               "cost_usd": f["cost_usd"], "requests": f["requests"]["total"]} for p, f in rows.items()}
    t = Table(title="Long tail: ServeGen m-large on up to 192 H100s", title_justify="left")
    for col in ("policy", "SLO attainment", "GPUs (mean)", "GPUs (peak)", "GPU-hours", "cost USD", "GPUs needed"):
        t.add_column(col, justify="right")
    for p in POLICIES:
        if p in out:
            o = out[p]
            needed = f"{o['gpus_mean']:.1f}" if o["attainment"] >= 0.99 else f"not at 99 % ({_pct(o['attainment'])})"
            t.add_row(p, _pct(o["attainment"]), f"{o['gpus_mean']:.1f}", f"{o['gpus_peak']:.0f}",
                      f"{o['gpu_hours']:.2f}", f"{o['cost_usd']:.2f}", needed)
    console.print(t)
    return out


def sweep(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    sat = results["saturation_rate_scale"]
    if sat is None:  # the sweep was not run (--sections)
        return {}
    t = Table(title=f"dedicated's saturation: rate scale {sat:.2f} (attainment falls to 99 %)", title_justify="left")
    t.add_column("rate scale", justify="right")
    t.add_column("dedicated attainment", justify="right")
    for r in sorted(_runs(results, "saturation"), key=lambda r: r["rate"]):
        t.add_row(f"{r['rate']:g}", _pct(r["figures"]["slo_attainment"]))
    console.print(t)
    seeds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in _runs(results, "sweep"):
        seeds.setdefault((f"{r['rate'] / sat:.1f}", r["policy"]), []).append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (load, policy), runs in seeds.items():  # the mean over the workload seeds, with the attainment's range
        att = [r["figures"]["slo_attainment"] for r in runs]
        inter = [x for r in runs if (x := r["figures"]["per_class"].get("interactive", {}).get("slo_attainment"))
                 is not None]
        out.setdefault(load, {})[policy] = {
            "attainment": float(np.mean(att)), "attainment_min": min(att), "attainment_max": max(att),
            "cost_usd": float(np.mean([r["figures"]["cost_usd"] for r in runs])),
            "gpu_hours": float(np.mean([r["figures"]["gpu_hours"] for r in runs])),
            "interactive": float(np.mean(inter)) if inter else None, "rate_scale": runs[0]["rate"],
            "seeds": len(runs)}
    num_seeds = max((o["seeds"] for row in out.values() for o in row.values()), default=1)
    t = Table(title=f"Load sweep (× dedicated's saturation), mean of {num_seeds} workload seed(s): SLO attainment "
                    "(range) · interactive · cost USD", title_justify="left")
    t.add_column("load", justify="right")
    for p in POLICIES:
        t.add_column(p, justify="right")
    for load in sorted(out, key=float):
        cells = [f"{_pct(o['attainment'])} ({100 * o['attainment_min']:.1f}–{100 * o['attainment_max']:.1f}) · "
                 f"{_pct(o['interactive'])} · {o['cost_usd']:.2f}" if (o := out[load].get(p)) else "-"
                 for p in POLICIES]
        t.add_row(load, *cells)
    console.print(t)
    return out


WARM_UP_S = 300.0  # the first placement interval: the prior's placement is replaced by the forecasts' first one


def stability(results: dict[str, Any]) -> dict[str, float]:
    """Replicas moved per plan on the stationary workload: after the warm-up (the target) and over the whole run;
    empty when the section did not run."""
    if not _runs(results, "stability"):
        return {}
    moves = [m for r in _runs(results, "stability") for m in r["figures"]["moves"]]
    steady = [m["share"] for m in moves if m["t_s"] >= WARM_UP_S] or [0.0]
    shares = [m["share"] for m in moves] or [0.0]
    out = {"plans": len(moves), "placements": sum(m["placement"] for m in moves), "max_share": max(steady),
           "mean_share": float(np.mean(steady)), "max_share_with_warm_up": max(shares),
           "moves_in_warm_up": [m for m in moves if m["t_s"] < WARM_UP_S and m["moved"]]}
    t = Table(title="Stability: stationary chat-mix on small-hetero (fleetwise)", title_justify="left")
    for col in ("plans", "re-placements", f"moved per plan after {WARM_UP_S:.0f} s: mean", "max",
                "max in the warm-up"):
        t.add_column(col, justify="right")
    t.add_row(str(out["plans"]), str(out["placements"]), _pct(out["mean_share"]), _pct(out["max_share"]),
              _pct(out["max_share_with_warm_up"]))
    console.print(t)
    return out


def liveput(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in _runs(results, "liveput"):
        f = r["figures"]
        out.setdefault(r["case"], {})[r["policy"]] = {
            "tokens_per_gpu_hour": good_tokens_per_gpu_hour(f), "attainment": f["slo_attainment"],
            "gpu_hours": f["gpu_hours"], "cost_usd": f["cost_usd"]}
    t = Table(title="Liveput: SLO goodput per GPU-hour (tokens) · attainment · GPU-hours", title_justify="left")
    t.add_column("trace", justify="right")
    for p in SPOT_POLICIES:
        t.add_column(p, justify="right")
    for case, row in out.items():
        t.add_row(case, *[f"{o['tokens_per_gpu_hour']:,.0f} · {_pct(o['attainment'])} · {o['gpu_hours']:.2f}"
                          if (o := row.get(p)) else "-" for p in SPOT_POLICIES])
    console.print(t)
    return out


# -- targets ------------------------------------------------------------------------------------------------------------
def targets(lt, sw, st, lv) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, figure: str, baselines: str, met: bool) -> None:
        rows.append({"target": name, "fleetwise": figure, "baselines": baselines, "met": bool(met)})

    if lt:
        fw, pr, de = lt.get("fleetwise"), lt.get("prism"), lt.get("dedicated")
        if fw and pr and de:
            add("long tail: ≥ 99 % within SLO", _pct(fw["attainment"]),
                ", ".join(f"{p} {_pct(lt[p]['attainment'])}" for p in POLICIES if p in lt and p != "fleetwise"),
                fw["attainment"] >= 0.99)
            add("long tail: GPUs ≤ 0.8 × prism's", f"{fw['gpus_mean']:.1f}",
                f"prism {pr['gpus_mean']:.1f} (× 0.8 = {0.8 * pr['gpus_mean']:.1f})",
                fw["attainment"] >= 0.99 and fw["gpus_mean"] <= 0.8 * pr["gpus_mean"])
            add("long tail: GPUs ≤ 0.5 × dedicated's", f"{fw['gpus_mean']:.1f}",
                f"dedicated {de['gpus_mean']:.1f} (× 0.5 = {0.5 * de['gpus_mean']:.1f})",
                fw["attainment"] >= 0.99 and fw["gpus_mean"] <= 0.5 * de["gpus_mean"])
    for load in ("1.2", "1.5"):
        row = sw.get(load, {})
        if "fleetwise" in row and "qlm" in row:
            fw, q = row["fleetwise"], row["qlm"]
            add(f"sweep {load}×: attainment ≥ qlm + 10 points", _pct(fw["attainment"]),
                ", ".join(f"{p} {_pct(row[p]['attainment'])}" for p in POLICIES if p in row and p != "fleetwise"),
                fw["attainment"] >= q["attainment"] + 0.10)
    if "fleetwise" in sw.get("1.2", {}):
        row = sw["1.2"]
        add("sweep 1.2×: interactive ≥ 95 %", _pct(row["fleetwise"]["interactive"]),
            ", ".join(f"{p} {_pct(row[p]['interactive'])}" for p in POLICIES if p in row and p != "fleetwise"),
            (row["fleetwise"]["interactive"] or 0) >= 0.95)
    gaps = [(k, v["fleetwise"], v["oracle"]) for k, v in sorted(sw.items(), key=lambda kv: float(kv[0]))
            if "fleetwise" in v and "oracle" in v]
    if lt and "fleetwise" in lt and "oracle" in lt:
        gaps.append(("long tail", lt["fleetwise"], lt["oracle"]))
    if gaps:
        ok = [f["attainment"] >= 0.9 * o["attainment"] and f["cost_usd"] <= 1.1 * o["cost_usd"] for _, f, o in gaps]
        add("within 10 % of oracle (attainment, at ≤ 1.1 × its cost)",
            "; ".join(f"{k}: {_pct(f['attainment'])} / ${f['cost_usd']:.2f}" for k, f, _ in gaps),
            "oracle " + "; ".join(f"{k}: {_pct(o['attainment'])} / ${o['cost_usd']:.2f}" for k, _, o in gaps),
            all(ok))
    if st:
        add(f"stability: ≤ 5 % of replicas moved per plan (after {WARM_UP_S:.0f} s)", f"max {_pct(st['max_share'])}",
            f"{st['plans']} plans, {st['placements']} re-placements; warm-up max "
            f"{_pct(st['max_share_with_warm_up'])}", st["max_share"] <= 0.05)
    for case, row in lv.items():
        if {"fleetwise", "spotserve", "oracle"} <= set(row):
            fw, sp, orc = (row[p]["tokens_per_gpu_hour"] for p in ("fleetwise", "spotserve", "oracle"))
            add(f"liveput {case}: ≥ 1.1 × reactive's goodput/GPU-h", f"{fw:,.0f}", f"spotserve {sp:,.0f}",
                fw >= 1.1 * sp)
            add(f"liveput {case}: ≥ 0.9 × oracle's goodput/GPU-h", f"{fw:,.0f}", f"oracle {orc:,.0f}",
                fw >= 0.9 * orc)
    t = Table(title="Targets (issue 5)", title_justify="left")
    for col in ("target", "fleetwise", "baselines (same run)", "met"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["target"], r["fleetwise"], r["baselines"], "[green]yes[/]" if r["met"] else "[red]no[/]")
    console.print(t)
    return rows


def report(results: dict[str, Any], png) -> None:
    lt, sw, st, lv = longtail(results), sweep(results), stability(results), liveput(results)
    results["summary"] = {"longtail": lt, "sweep": sw, "stability": st, "liveput": lv}
    results["targets"] = targets(lt, sw, st, lv)
    plot(results["summary"], png)
    console.print(f"wall {results['wall_s']:.0f} s; wrote {png} and the JSON beside it")


def plot(summary: dict[str, Any], png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    lt = summary["longtail"]
    for p, o in lt.items():
        ax[0, 0].scatter(o["gpus_mean"], 100 * o["attainment"], s=60, label=p)
        ax[0, 0].annotate(p, (o["gpus_mean"], 100 * o["attainment"]), fontsize=8, xytext=(4, 4),
                          textcoords="offset points")
    ax[0, 0].axhline(99, color="grey", lw=0.8, ls="--")
    ax[0, 0].set(title="Long tail: attainment against GPUs held", xlabel="GPUs holding weights (time average)",
                 ylabel="SLO attainment (%)")
    sw = summary["sweep"]
    loads = sorted(sw, key=float)
    for p in POLICIES:
        xs = [float(k) for k in loads if p in sw[k]]
        ax[0, 1].plot(xs, [100 * sw[k][p]["attainment"] for k in loads if p in sw[k]], marker="o", label=p)
        ax[1, 0].plot(xs, [100 * (sw[k][p]["interactive"] or 0) for k in loads if p in sw[k]], marker="o", label=p)
    ax[0, 1].set(title="Load sweep: SLO attainment", xlabel="load (× dedicated's saturation)", ylabel="%")
    ax[1, 0].set(title="Load sweep: interactive class", xlabel="load (× dedicated's saturation)", ylabel="%")
    ax[0, 1].legend(fontsize=8)
    lv = summary["liveput"]
    width = 0.25
    for i, p in enumerate(SPOT_POLICIES):
        cases = list(lv)
        ax[1, 1].bar(np.arange(len(cases)) + i * width, [lv[c].get(p, {}).get("tokens_per_gpu_hour", 0) for c in cases],
                     width, label=p)
        ax[1, 1].set_xticks(np.arange(len(cases)) + width, cases)
    ax[1, 1].set(title="Spot pools: SLO goodput per GPU-hour", ylabel="output tokens within SLO / GPU-hour")
    ax[1, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
