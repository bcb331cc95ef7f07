"""`fleetwise forecast --trace FILE`: backtest the forecasting methods on a trace and forecast what comes next.

Request traces (Azure, Mooncake, canonical) give requests per interval per model; a ServeGen folder gives them per
client (the folder's total by default: bottom-up over clients unless the direct forecast backtests clearly
better); an availability trace (Parcae, SpotServe, SkyPilot) gives GPUs up per interval. The backtest table shows
every candidate method × lead with its WAPE (availability: MAE) and the coverage of its conformal bands; the
forecast table the next `--horizon`; `--plot` draws the bands over the actuals. forecasters, statsmodels, pandas
and matplotlib are imported inside the command so that `fleetwise --help` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller.console import err, out, print_json
from core.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from core.forecast import BacktestScore, Forecast
    from forecasters.sources import SeriesSource


@dataclass
class Report:
    """Everything the command prints, writes as JSON or plots."""

    series: str
    kind: str
    interval_s: float
    forecast: Forecast
    rows: list[dict[str, Any]]  # method, chosen, score (by lead), coverage
    history: np.ndarray
    backtest: tuple[np.ndarray, np.ndarray, dict[float, np.ndarray]] | None = None  # lead-1 origins, point, bands
    notes: list[str] = field(default_factory=list)


def parse_duration(text: str, option: str) -> float:
    """Seconds in `10m`, `600s`, `1h`, `90min` or a bare number of seconds."""
    import pandas as pd

    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else pd.to_timedelta(text).total_seconds()
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(option, text, "a positive duration such as 600s, 10m, 1h or 600")
    return seconds


def forecast(
    trace: Annotated[Path, typer.Option("--trace", help="Request trace file, ServeGen folder, or availability "
                                                         "trace (Parcae/SpotServe CSV or TXT, SkyPilot JSON).")],
    model: Annotated[str | None, typer.Option("--model", help="One model, ServeGen client (id or name) or pool; "
                                                               "default: the total.")] = None,
    interval: Annotated[str, typer.Option("--interval", help="Interval length, e.g. 10m, 600s, 1m.")] = "10m",
    horizon: Annotated[str, typer.Option("--horizon", help="How far ahead to forecast, e.g. 1h.")] = "1h",
    plot: Annotated[Path | None, typer.Option("--plot", help="Write forecast bands over actuals to this PNG.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the backtest and forecast as JSON.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes for fitting many series.")] = 2,
) -> None:
    """Backtest forecasting methods on a trace (method × lead × WAPE × coverage) and forecast the horizon."""
    from forecasters.sources import load_source

    interval_s = parse_duration(interval, "--interval")
    horizon_s = parse_duration(horizon, "--horizon")
    if horizon_s < interval_s:
        raise InputError("--horizon", horizon, f"at least one interval ({interval})")
    steps = round(horizon_s / interval_s)
    if not trace.exists():
        raise InputError("--trace", str(trace), "an existing request trace, ServeGen folder or availability trace",
                         problem=f"no such file or folder: {trace}")
    source = load_source(trace, interval_s=interval_s, model=model)
    if source.kind == "availability":
        report = _availability_report(source, steps)
    else:
        report = _load_report(source, steps, workers, quiet=json_out)
    if plot is not None:
        _plot(report, plot)
    if json_out:
        print_json(_as_json(report))
        return
    if report.rows:
        out.print(_backtest_table(report))
    else:
        out.print("[yellow]no backtest[/]: the history is too short for one (see the fallback below)")
    out.print(_forecast_table(report))
    for note in report.notes:
        out.print(f"[dim]{note}[/]")
    if plot is not None:
        out.print(f"plot written to {plot}")


# -- load series -----------------------------------------------------------------------------------------------------
def _load_report(source: SeriesSource, steps: int, workers: int, *, quiet: bool) -> Report:
    from forecasters.backtest import rolling_bands
    from forecasters.hierarchy import TotalForecaster
    from forecasters.load import LoadForecaster
    from forecasters.selection import LoadConfig

    config = LoadConfig(max_lead=steps)
    series = source.children
    y = source.target()
    if source.selected is None and len(series.names) > 1:
        total = TotalForecaster(series="total", config=config)
        with _progress(len(series.names), "fitting series", quiet=quiet) as tick:
            total.fit(series.counts, interval_s=series.interval_s, start_s=series.start_s, names=series.names,
                      workers=workers, score_coverage=True, on_done=tick)
        selection = total.direct.selection
        scores = list(selection.scores) if selection else []
        if total.bottom_up_score is not None:
            scores.append(total.bottom_up_score)
        chosen = "bottom_up" if total.use_bottom_up else total.direct.method
        paths = total.validation_paths if total.use_bottom_up else (selection.chosen.paths if selection else None)
        fc = total.forecast(steps)
        calibration = total.calibration
    else:
        single = LoadForecaster(series=source.name, config=config)
        with _progress(1, "selecting a method", quiet=quiet) as tick:
            single.fit(y, interval_s=series.interval_s, start_s=series.start_s, score_coverage=True)
            tick()
        selection = single.selection
        scores = list(selection.scores) if selection else []
        chosen = single.method
        paths = selection.chosen.paths if selection else None
        fc = single.forecast(steps)
        calibration = selection.calibration if selection else None
    report = Report(source.name, source.kind, series.interval_s, fc, [_row(s, chosen) for s in scores], y)
    if paths is not None and selection is not None and calibration is not None:
        report.backtest = rolling_bands(paths, y, selection.first_origin, 1, (0.1, 0.5, 0.9), floor=calibration.floor,
                                        window=config.calibration_window, calib_start=selection.first_origin)
        report.notes.append(f"backtest: {len(y) - selection.first_origin - 1} origins from interval "
                            f"{selection.first_origin} (fitted on the intervals before); coverage: rolling conformal "
                            f"bands over the second half of them")
    if fc.fallback_reason:  # a fallback method's reason, or the repairs made to the history (gaps)
        report.notes.append(f"{'fallback' if selection is None else 'history'}: {fc.fallback_reason}")
    return report


def _row(score: BacktestScore, chosen: str) -> dict[str, Any]:
    return {"method": score.method, "chosen": score.method == chosen.split("[")[0] or score.method == chosen,
            "wape_by_lead": dict(score.wape_by_lead), "coverage": dict(score.coverage)}


# -- availability ----------------------------------------------------------------------------------------------------
def _availability_report(source: SeriesSource, steps: int) -> Report:
    from forecasters.availability import (
        AvailabilityForecaster,
        backtest_availability,
        rolling_change_quantiles,
    )

    y = source.target()
    capacity = int(y.max())
    f = AvailabilityForecaster(pool=source.name, capacity=capacity)
    assert source.trace is not None
    f.fit(y, interval_s=source.children.interval_s, removals=source.trace.removals())
    scores = backtest_availability(y, range(1, steps + 1), capacity=capacity)
    rows: dict[str, dict[str, Any]] = {}
    for s in scores:
        row = rows.setdefault(s.method, {"method": s.method, "chosen": s.method == "empirical_change",
                                         "mae_by_lead": {}, "wape_by_lead": {}, "coverage": {}})
        row["mae_by_lead"][s.lead] = s.mae
        row["wape_by_lead"][s.lead] = s.wape
        if s.coverage_p10_p90 is not None:
            row["coverage"].setdefault("p10-p90", []).append(s.coverage_p10_p90)
        if s.pit_coverage_p10_p90 is not None:  # calibration of the integer-count distribution (randomised PIT)
            row["coverage"].setdefault("pit p10-p90", []).append(s.pit_coverage_p10_p90)
        if s.coverage_adaptive is not None:
            row["coverage"].setdefault("adaptive", []).append(s.coverage_adaptive)
    for row in rows.values():
        row["coverage"] = {k: sum(v) / len(v) for k, v in row["coverage"].items()}
    dist = f.distribution(steps)
    report = Report(source.name, source.kind, source.children.interval_s, dist.forecast, list(rows.values()), y)
    import numpy as np

    bands = rolling_change_quantiles(y, 1, (0.1, 0.5, 0.9), window=f.config.window,
                                     min_samples=f.config.min_samples, capacity=capacity)
    origins = np.arange(10, len(y) - 1)
    report.backtest = (origins, bands[0.5][origins], {q: b[origins] for q, b in bands.items()})
    band = f.band(steps)
    shown = sorted({1, (steps + 1) // 2, steps})
    report.notes.append(f"adaptive {f.config.band_level:.0%} band (its level learned from its own past misses): "
                        + ", ".join(f"+{_fmt_duration(h * source.children.interval_s)} "
                                    f"[{band[h - 1, 0]:.0f}, {band[h - 1, 1]:.0f}]" for h in shown))
    report.notes.append(f"preemption hazard {dist.hazard_per_hour:.3f} per GPU-hour "
                        f"(P(removed within one interval) = {dist.preempt_prob_per_interval:.4f}); "
                        f"point forecast = p50; capacity taken as the trace's maximum, {capacity}")
    return report


# -- output ----------------------------------------------------------------------------------------------------------
def _backtest_table(report: Report) -> Table:
    measure = "MAE" if report.kind == "availability" else "WAPE"
    t = Table(title=f"Backtest — {report.series} ({measure} by lead, rolling origin; band coverage)",
              title_justify="left")
    t.add_column("method", no_wrap=True)
    leads = sorted({h for r in report.rows for h in r["wape_by_lead"]})
    shown = leads if len(leads) <= 8 else sorted({leads[0], leads[len(leads) // 2], leads[-1], *leads[:3]})
    for h in shown:
        t.add_column(f"+{_fmt_duration(h * report.interval_s)}", justify="right")
    t.add_column("p10–p90", justify="right")
    t.add_column("≤p90", justify="right")
    keys = ["p10-p90", "p90"]
    if report.kind == "availability":  # integer counts: a band covers whole steps; the PIT says if it is calibrated
        t.add_column("PIT p10–p90", justify="right")
        t.add_column("adaptive 80 %", justify="right")
        keys += ["pit p10-p90", "adaptive"]
    for r in report.rows:
        key = "mae_by_lead" if report.kind == "availability" else "wape_by_lead"
        cells = [f"{r[key][h]:.3f}" if report.kind == "availability" else f"{100 * r[key][h]:.1f}%" for h in shown]
        cov = r["coverage"]
        cover = [f"{100 * cov[k]:.0f}%" if k in cov else "–" for k in keys]
        name = f"[bold green]{r['method']} ✓[/]" if r["chosen"] else r["method"]
        t.add_row(name, *cells, *cover)
    return t


def _forecast_table(report: Report) -> Table:
    fc = report.forecast
    t = Table(title=f"Forecast — {fc.series}: {fc.method} ({fc.quantity} per {_fmt_duration(fc.interval_s)})",
              title_justify="left")
    t.add_column("interval starts (s)", justify="right")
    t.add_column("mean", justify="right")
    levels = sorted(fc.quantiles)
    for q in levels:
        t.add_column(f"p{round(q * 100):d}", justify="right")
    for i in range(fc.horizon):
        t.add_row(f"{fc.start_s + i * fc.interval_s:,.0f}", f"{fc.mean[i]:,.1f}",
                  *(f"{fc.quantiles[q][i]:,.1f}" for q in levels))
    return t


def _as_json(report: Report) -> dict[str, Any]:
    return {"series": report.series, "kind": report.kind, "interval_s": report.interval_s,
            "method": report.forecast.method, "fallback_reason": report.forecast.fallback_reason,
            "backtest": report.rows, "forecast": report.forecast.model_dump(mode="json"), "notes": report.notes}


def _plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    hours = report.interval_s / 3600.0
    fc = report.forecast
    y = report.history
    first = max(0, len(y) - 3 * max(fc.horizon, 48)) if report.backtest is None else max(0, report.backtest[0][0] - 24)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.plot(np.arange(first, len(y)) * hours, y[first:], color="black", lw=1.0, label="actual")
    if report.backtest is not None:
        origins, point, bands = report.backtest
        x = (origins + 1) * hours
        ax.fill_between(x, bands[0.1], bands[0.9], color="tab:blue", alpha=0.25, lw=0, label="backtest p10–p90 (+1)")
        ax.plot(x, point, color="tab:blue", lw=0.8, label="backtest forecast (+1)")
    future = (len(y) + np.arange(fc.horizon)) * hours
    lo, hi = min(fc.quantiles), max(fc.quantiles)
    ax.fill_between(future, fc.quantile(lo), fc.quantile(hi), color="tab:orange", alpha=0.2, lw=0,
                    label=f"forecast p{round(100 * lo)}–p{round(100 * hi)}")
    ax.plot(future, fc.mean, color="tab:orange", lw=1.5, label=f"forecast ({fc.method})")
    ax.set_xlabel("hours from trace start")
    ax.set_ylabel(f"{fc.quantity} per {_fmt_duration(report.interval_s)}")
    ax.set_title(f"{report.series}: forecast bands over actuals")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class _progress:
    """A Rich progress bar on stderr that hands out a `tick()` callback (silent with --json)."""

    def __init__(self, total: int, what: str, *, quiet: bool) -> None:
        self._bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                             transient=True, disable=quiet)
        self._task = self._bar.add_task(what, total=total)

    def __enter__(self):
        self._bar.__enter__()
        return lambda: self._bar.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)
