"""PNG figures of a what-if report (matplotlib, Agg backend; imported only when `--plot` is given).

- `plot_comparison`: SLO attainment per policy (overall and per class) beside cost (GPU-hours annotated), and
  below, attainment over time per policy.
- `plot_sweep`: SLO attainment and cost against load, one line per policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

Report = dict[str, Any]
_COLORS = plt.get_cmap("tab10").colors


def _color(i: int) -> tuple[float, ...]:
    return _COLORS[i % len(_COLORS)]


def plot_comparison(report: Report, path: Path) -> None:
    policies: dict[str, dict[str, Any]] = report["policies"]
    names = list(policies)
    fig = plt.figure(figsize=(13, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.1])
    _attainment_bars(fig.add_subplot(grid[0, 0]), policies, names)
    _cost_bars(fig.add_subplot(grid[0, 1]), policies, names)
    _timeline(fig.add_subplot(grid[1, :]), policies, names)
    cfg = report.get("config", {})
    fig.suptitle(f"What-if: {Path(str(cfg.get('workload', ''))).name} on {Path(str(cfg.get('fleet', ''))).stem}"
                 f"  (rate × {cfg.get('rate_scale', 1)}, seed {cfg.get('seed', 0)})", fontsize=13)
    fig.savefig(path, dpi=110)
    plt.close(fig)


_HATCHES = ("//", "..", "xx", "\\\\", "++", "oo")


def _attainment_bars(ax: plt.Axes, policies: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Per policy (its colour): all requests solid, then one hatched, lighter bar per SLO class."""
    classes = list(dict.fromkeys(c for f in policies.values() for c in f.get("per_class", {})))
    width = 0.8 / (1 + len(classes))
    for i, name in enumerate(names):
        f = policies[name]
        values = [f["slo_attainment"]] + [f["per_class"].get(c, {}).get("slo_attainment", 0.0) for c in classes]
        for k, v in enumerate(values):
            x = i + (k - len(classes) / 2) * width
            bar = ax.bar(x, 100 * v, width, color=_color(i), alpha=1.0 if k == 0 else 0.45,
                         hatch=None if k == 0 else _HATCHES[(k - 1) % len(_HATCHES)], edgecolor="white" if k else None)
            if k == 0:
                ax.bar_label(bar, fmt="%.1f", fontsize=8, padding=2)
    handles = [Patch(facecolor="0.35", label="all requests")] + [
        Patch(facecolor="0.8", hatch=_HATCHES[k % len(_HATCHES)], edgecolor="white", label=f"class {c}")
        for k, c in enumerate(classes)]
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 124)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title("SLO attainment (TTFT and TPOT met; dropped = missed)")
    ax.legend(handles=handles, fontsize=8, loc="upper center", ncols=len(handles), framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)


def _cost_bars(ax: plt.Axes, policies: dict[str, dict[str, Any]], names: list[str]) -> None:
    costs = [policies[n]["cost_usd"] for n in names]
    bars = ax.bar(names, costs, color=[_color(i) for i in range(len(names))])
    ax.bar_label(bars, labels=[f"${c:.2f}\n{policies[n]['gpu_hours']:.1f} GPU-h" for n, c in zip(names, costs)],
                 fontsize=8, padding=2)
    ax.set_ylim(0, max(costs + [1e-9]) * 1.3)
    ax.set_ylabel("cost (USD)")
    ax.set_title("Cost of the GPUs holding replicas")
    ax.grid(axis="y", alpha=0.3)


def _timeline(ax: plt.Axes, policies: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Attainment per window of arrival time; the y axis zooms to the data so close policies stay apart."""
    lowest = 100.0
    styles = ("-", "--", "-.", ":")
    for i, name in enumerate(names):
        tl = policies[name].get("timeline") or {}
        t = np.asarray(tl.get("t_s", []), dtype=float)
        y = 100 * np.asarray(tl.get("slo_attainment", []), dtype=float)
        counts = np.asarray(tl.get("requests", [1] * len(t)))
        if len(t):
            y = np.where(counts > 0, y, np.nan)  # windows without arrivals have no attainment
            lowest = min(lowest, float(np.nanmin(y)) if np.isfinite(y).any() else 100.0)
            # Close the last window: a step plot draws each value up to the next window's start.
            t, y = np.append(t, t[-1] + float(tl.get("window_s", 0))), np.append(y, y[-1])
            ax.step(t / 60, y, where="post", label=name, color=_color(i), lw=1.8, ls=styles[i % len(styles)])
    window = next((p.get("timeline", {}).get("window_s") for p in policies.values() if p.get("timeline")), None)
    ax.set_xlabel("time (minutes)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(max(0.0, np.floor(lowest / 5) * 5 - 5), 101)
    ax.set_title(f"SLO attainment over time (requests by arrival, {window:g} s windows)" if window
                 else "SLO attainment over time")
    ax.legend(fontsize=9, ncols=len(names), loc="lower left")
    ax.grid(alpha=0.3)


def plot_sweep(report: Report, path: Path) -> None:
    sweep = report["sweep"]
    values = [run["value"] for run in sweep["runs"]]
    names = list(report["policies"])
    fig, (ax_att, ax_cost) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    lowest = 100.0
    for i, name in enumerate(names):
        att = [100 * run["policies"][name]["slo_attainment"] for run in sweep["runs"]]
        cost = [run["policies"][name]["cost_usd"] for run in sweep["runs"]]
        lowest = min(lowest, *att)
        ax_att.plot(values, att, marker="o", label=name, color=_color(i))
        ax_cost.plot(values, cost, marker="o", label=name, color=_color(i))
    ax_att.set_xlabel(f"load ({sweep['parameter']} × nominal)")
    ax_att.set_ylabel("SLO attainment (%)")
    ax_att.set_ylim(max(0.0, np.floor(lowest / 5) * 5 - 5), 101)
    ax_cost.set_ylim(bottom=0)
    ax_att.set_title("SLO attainment against load")
    ax_cost.set_xlabel(f"load ({sweep['parameter']} × nominal)")
    ax_cost.set_ylabel("cost (USD)")
    ax_cost.set_title("Cost against load")
    for ax in (ax_att, ax_cost):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    cfg = report.get("config", {})
    fig.suptitle(f"Load sweep: {Path(str(cfg.get('workload', ''))).name} on {Path(str(cfg.get('fleet', ''))).stem}",
                 fontsize=13)
    fig.savefig(path, dpi=110)
    plt.close(fig)
