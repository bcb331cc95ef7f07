"""`fleetwise trace inspect | convert`: look at a workload, and turn any workload into the canonical CSV.

Workload modules (pandas) and matplotlib are imported inside the commands so `fleetwise --help` stays fast.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller.console import err, out, print_json
from core.errors import InputError

if TYPE_CHECKING:
    from core.fleet import FleetSpec
    from core.requests import RequestTable
    from workloads.availability import AvailabilityTrace
    from workloads.rates import RateProfile
    from workloads.servegen import ServeGenSet
    from workloads.spec import WorkloadSpec
    from workloads.summary import TraceSummary

app = typer.Typer(help="Request traces and workloads: inspect and convert.", no_args_is_help=True)

Source = Annotated[Path, typer.Argument(help="Trace file (Azure CSV, Mooncake JSONL, canonical CSV), ServeGen "
                                             "folder, rate profile (CSV of requests/s per minute), or workload "
                                             "YAML (kind: Workload).")]
FleetOpt = Annotated[Path | None, typer.Option("--fleet", help="Map models and SLO classes onto this fleet.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed for synthesis, splits and SLO draws.")]
# Where each convert option lands in the workload spec it builds (so a spec error names the option).
_CONVERT_OPTIONS = {"spec.rate_scale": "--rate-scale", "spec.slice.start_s": "--start-s", "spec.slice.end_s": "--end-s",
                    "spec.models.zipf_exponent": "--zipf", "spec.models.to": "--split-models",
                    "spec.source.trace.model": "--model", "spec.slo.mix": "--slo-class"}


@app.command("inspect")
def inspect(
    source: Source,
    fleet: FleetOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the arrival rate over time to this PNG.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Models shown before the 'others' row.")] = 15,
    seed: SeedOpt = 0,
) -> None:
    """Requests, duration, per-model rate and prompt/output length percentiles (p50/p90/p99).

    A ServeGen folder or a rate profile without --fleet is summarised from its rates, without synthesising
    requests; an availability trace (Parcae / SpotServe CSV, SpotServe segment, SkyPilot JSON) by its instances up
    and removals.
    """
    from controller.outputs import check_output
    from workloads.availability import is_availability_trace, or_availability, read_availability
    from workloads.formats import detect_format
    from workloads.rates import read_rate_profile
    from workloads.servegen import read_servegen

    check_output("--plot", plot, suffix=".png", inputs=(source, fleet))
    if is_availability_trace(source):
        _inspect_availability(read_availability(source), source, plot=plot, json_out=json_out)
        return
    try:
        is_yaml = source.suffix.lower() in (".yaml", ".yml")
        kind = detect_format(source) if fleet is None and not is_yaml else None
        if kind == "servegen":
            _inspect_servegen(read_servegen(source), source, plot=plot, json_out=json_out, top=top)
            return
        if kind == "rates":
            _inspect_rates(read_rate_profile(source), source, plot=plot, json_out=json_out)
            return
        table = _load(source, fleet, seed)
    except InputError as exc:
        raise (or_availability(exc) if exc.where == "path" else exc) from None
    _inspect_table(table, source, plot=plot, json_out=json_out, top=top)


@app.command("convert")
def convert(
    source: Source,
    dest: Annotated[Path, typer.Argument(help="Canonical CSV to write (arrival_s,model,slo_class,...).")],
    fleet: FleetOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name for a single-model trace.")] = None,
    slo_class: Annotated[str | None, typer.Option("--slo-class", help="Put every request in this class.")] = None,
    start_s: Annotated[float | None, typer.Option("--start-s", help="Keep arrivals from here (s; rebased to 0).")] = None,
    end_s: Annotated[float | None, typer.Option("--end-s", help="Keep arrivals before this time (s).")] = None,
    rate_scale: Annotated[float, typer.Option("--rate-scale", help="Multiply the arrival rate.")] = 1.0,
    split: Annotated[int | None, typer.Option("--split", help="Split over N models by Zipf popularity.")] = None,
    split_models: Annotated[str | None, typer.Option("--split-models", help="Split over these comma-separated "
                                                                            "models (most popular first).")] = None,
    zipf: Annotated[float, typer.Option("--zipf", help="Zipf exponent for --split / --split-models.")] = 1.0,
    seed: SeedOpt = 0,
) -> None:
    """Write any workload as the canonical CSV, optionally sliced, rate-scaled, split over models, relabelled."""
    from controller.outputs import check_output
    from workloads.canonical import write_canonical

    check_output("dest", dest, inputs=(source, fleet, *_referenced_files(source)))
    options = {"--model": model, "--start-s": start_s, "--end-s": end_s, "--split": split,
               "--split-models": split_models, "--slo-class": slo_class}
    if source.suffix.lower() in (".yaml", ".yml"):
        given = [k for k, v in options.items() if v is not None] + (["--rate-scale"] if rate_scale != 1 else [])
        if given:
            raise InputError(given[0], options.get(given[0], rate_scale),
                             "only --fleet and --seed with a workload YAML (set transforms in the YAML)")
        table = _load(source, fleet, seed)
    else:
        spec = _spec_from_options(source, model=model, slo_class=slo_class, start_s=start_s, end_s=end_s,
                                  rate_scale=rate_scale, split=split, split_models=split_models, zipf=zipf)
        table = _load(source, fleet, seed, spec=spec)
    if not len(table):
        raise InputError("source", str(source), "a workload with at least one request in the kept time range",
                         problem="no requests to write")
    with _progress("writing") as report:
        write_canonical(table, dest)
        report(1, 1)
    models = len(table.model_names)
    out.print(f"wrote {len(table):,} requests ({models} model{'s' if models != 1 else ''}, "
              f"{table.duration_s / 60:.1f} min) to {dest}")


def _spec_from_options(source: Path, *, model: str | None, slo_class: str | None, start_s: float | None,
                       end_s: float | None, rate_scale: float, split: int | None, split_models: str | None,
                       zipf: float) -> WorkloadSpec:
    """The workload spec that the convert options describe, so convert and YAML share one pipeline; a value the
    spec refuses is reported under its option."""
    from pydantic import ValidationError

    from core.yamlspec import error_from_validation
    from workloads.spec import MAX_SPLIT_MODELS, WorkloadSpec

    if rate_scale <= 0:
        raise InputError("--rate-scale", rate_scale, "a rate factor > 0")
    if start_s is not None and start_s < 0:
        raise InputError("--start-s", start_s, "a time ≥ 0")
    if end_s is not None and end_s <= (start_s or 0.0):
        raise InputError("--end-s", end_s, f"a time greater than --start-s ({start_s or 0:g})")
    if split is not None and not 1 <= split <= MAX_SPLIT_MODELS:
        raise InputError("--split", split, f"a number of models from 1 to {MAX_SPLIT_MODELS:,}")
    if split is not None and split_models is not None:
        raise InputError("--split", split, "either --split or --split-models, not both")
    if zipf < 0:
        raise InputError("--zipf", zipf, "an exponent ≥ 0")
    body: dict[str, Any] = {"source": {"trace": {"path": str(source.resolve()), "model": model}},
                            "rate_scale": rate_scale}
    if start_s is not None or end_s is not None:
        body["slice"] = {"start_s": start_s or 0.0, "end_s": end_s}
    if split is not None or split_models is not None:
        names = [n.strip() for n in split_models.split(",") if n.strip()] if split_models else \
            [f"model-{i}" for i in range(split or 0)]
        body["models"] = {"mode": "split", "to": names, "zipf_exponent": zipf}
    if slo_class is not None:
        body["slo"] = {"mix": {slo_class: 1.0}}
    doc = {"apiVersion": "fleetwise/v1", "kind": "Workload", "metadata": {"name": "convert"}, "spec": body}
    try:
        return WorkloadSpec.model_validate(doc)
    except ValidationError as exc:
        err = error_from_validation(exc)
        option = next((o for path, o in _CONVERT_OPTIONS.items() if err.where.startswith(path)), err.where)
        raise InputError(option, err.value, err.allowed, problem=err.problem) from None


def _referenced_files(source: Path) -> list[Path]:
    """The files a workload YAML reads (trace, length trace, fleet): convert must not overwrite them either."""
    from workloads.spec import load_workload_spec

    if source.suffix.lower() not in (".yaml", ".yml"):
        return []
    body = load_workload_spec(source).spec
    trace = body.source.trace
    named = [body.fleet, trace.path if trace else None, trace.lengths.trace if trace and trace.lengths else None]
    synthetic = body.source.synthetic
    named.append(synthetic.lengths.trace if synthetic else None)
    return [source.parent / n for n in named if n is not None]


def _load(source: Path, fleet_path: Path | None, seed: int, *, spec: WorkloadSpec | None = None) -> RequestTable:
    """Load with a progress bar (ServeGen synthesis) and trace-order warnings shown as one yellow line each."""
    from core.fleet import load_fleet
    from workloads.spec import build_workload, load_workload
    from workloads.tabular import TraceOrderWarning

    fleet: FleetSpec | None = load_fleet(fleet_path) if fleet_path is not None else None
    with warnings.catch_warnings(record=True) as caught, _progress("synthesising") as report:
        warnings.simplefilter("always", TraceOrderWarning)
        if spec is None:
            table = load_workload(source, fleet=fleet, seed=seed, on_progress=report)
        else:
            table = build_workload(spec, base_dir=Path.cwd(), fleet=fleet, seed=seed, on_progress=report)
    for w in caught:
        if issubclass(w.category, TraceOrderWarning):
            err.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    return table


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A transient Rich progress bar on stderr, shown once work reports progress."""
    columns = (TextColumn(f"{what}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = None

        def report(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(what, total=total)
            bar.update(task, completed=done, total=total)

        yield report


def _inspect_table(table: RequestTable, source: Path, *, plot: Path | None, json_out: bool, top: int) -> None:
    from workloads.summary import rate_over_time, summarize

    if not len(table):
        raise InputError("source", str(source), "a workload with at least one request", problem="no requests")
    summary = summarize(table, top=top)
    if plot is not None:
        times, series = rate_over_time(table)
        _plot(times, series, plot, title=f"{source.name}: arrival rate", unit="requests/s")
    if json_out:
        print_json(asdict(summary) | {"source": str(source), "plot": str(plot) if plot else None})
        return
    models = f"{summary.num_models} model{'s' if summary.num_models != 1 else ''}"
    if len(table.model_names) > summary.num_models:
        models = f"{summary.num_models} of {len(table.model_names)} models with requests"
    out.print(f"[bold]{source.name}[/]: {summary.requests:,} requests over {_duration(summary.duration_s)} "
              f"({summary.rate_per_s:,.2f} req/s), {models}")
    out.print(_models_table(summary))
    if plot is not None:
        out.print(f"arrival rate plot: {plot}")


def _models_table(summary: TraceSummary) -> Table:
    t = Table(title="Per model (busiest first)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    width = min(max(len(r.model) for r in summary.models) + 5, 28)
    t.add_column("model", no_wrap=True, min_width=width)
    for col in ("requests", "req/s", "prompt tokens p50/p90/p99", "output tokens p50/p90/p99"):
        t.add_column(col, justify="right")
    rows = (*summary.models, summary.all_models) if summary.num_models > 1 else summary.models
    for row in rows:
        name = f"{row.model} ({row.num_models})" if row.model in ("others", "all") else row.model
        t.add_row(name, f"{row.requests:,}", f"{row.rate_per_s:,.3f}", _pcts(row.prompt_tokens_pct),
                  _pcts(row.output_tokens_pct), end_section=row is summary.models[-1])
    t.caption = "SLO classes: " + ", ".join(f"{k} {v:,}" for k, v in summary.slo_requests.items())
    return t


def _pcts(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def _inspect_servegen(sg: ServeGenSet, source: Path, *, plot: Path | None, json_out: bool, top: int) -> None:
    from workloads.summary import summarize_servegen

    rows, rest = summarize_servegen(sg, top=top)
    if plot is not None:
        busiest = {f"client {r.client}": sg.rate_per_s[int(list(sg.clients).index(r.client))] for r in rows[:5]}
        _plot(sg.window_start_s, {"all": sg.total_rate_per_s(), **busiest}, plot,
              title=f"{sg.name}: rate per {sg.window_s:g} s window", unit="requests/s")
    if json_out:
        print_json({"source": str(source), "name": sg.name, "clients": sg.num_clients, "windows": sg.num_windows,
                    "window_s": sg.window_s, "duration_s": sg.end_s - sg.start_s,
                    "expected_requests": sg.expected_requests(), "top": [asdict(r) for r in rows],
                    "others": asdict(rest) if rest else None})
        return
    out.print(f"[bold]{sg.name}[/] (ServeGen rate series): {sg.num_clients} clients × {sg.num_windows} windows of "
              f"{sg.window_s:g} s = {_duration(sg.end_s - sg.start_s)}; {sg.expected_requests():,.0f} requests "
              f"(mean {sg.total_rate_per_s().mean():,.1f} req/s, peak window {sg.total_rate_per_s().max():,.1f})")
    t = Table(title="Per client (busiest first)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("client", no_wrap=True)
    for col in ("requests", "mean req/s", "peak req/s", "active windows", "mean CV"):
        t.add_column(col, justify="right")
    for r in rows + ([rest] if rest else []):
        name = f"others ({sg.num_clients - len(rows)})" if r.client < 0 else f"c{r.client:03d}"
        t.add_row(name, f"{r.expected_requests:,.0f}", f"{r.mean_rate_per_s:,.3f}", f"{r.peak_rate_per_s:,.2f}",
                  f"{r.active_windows:,}", f"{r.mean_cv:.2f}")
    out.print(t)


def _inspect_rates(profile: RateProfile, source: Path, *, plot: Path | None, json_out: bool) -> None:
    import numpy as np

    from workloads.summary import RATE_PERCENTILES, summarize_rates

    summary = summarize_rates(profile)
    if plot is not None:
        _plot(profile.interval_s * np.arange(summary.intervals), {"all": profile.rates_per_s}, plot,
              title=f"{profile.name}: rate per {profile.interval_s:g} s", unit="requests/s")
    _figures(summary, source, plot=plot, json_out=json_out, plotted="rate plot", headline=(
        f"[bold]{profile.name}[/] (rate profile): {summary.intervals:,} intervals of {profile.interval_s:g} s = "
        f"{_duration(summary.duration_s)}; {summary.expected_requests:,.0f} requests expected "
        f"(mean {summary.mean_rate_per_s:,.3f} req/s)"), rows=[
        ("rate p" + "/p".join(map(str, RATE_PERCENTILES)) + " (req/s)", "/".join(f"{v:,.3f}" for v in summary.rate_pct)),
        ("peak rate (req/s) / peak ÷ mean", f"{summary.peak_rate_per_s:,.3f} / {summary.peak_to_mean:.2f}"),
        ("largest change between intervals (share of the mean)", f"{100 * summary.largest_step:.1f} %"),
        ("intervals without traffic", f"{summary.idle_intervals:,}"),
    ], note="whatif and trace convert draw requests from it: Poisson within each interval, lengths from the Azure "
            "conversation fit (set both in a workload YAML)")


def _inspect_availability(trace: AvailabilityTrace, source: Path, *, plot: Path | None, json_out: bool) -> None:
    import numpy as np

    from workloads.summary import COUNT_PERCENTILES, summarize_availability

    summary = summarize_availability(trace)
    if plot is not None:
        step_s = max(trace.duration_s / 2000, 1.0)
        counts = trace.counts(step_s)
        _plot(step_s * np.arange(len(counts)), {"all": counts}, plot, title=f"{trace.name}: instances up",
              unit="instances")
    _figures(summary, source, plot=plot, json_out=json_out, plotted="instances-up plot", headline=(
        f"[bold]{trace.name}[/] (availability trace): {summary.events:,} events over "
        f"{_duration(summary.duration_s)}; {summary.min_count}–{summary.max_count} instances up "
        f"(time-weighted mean {summary.mean_count:.1f})"), rows=[
        ("instances up, p" + "/p".join(map(str, COUNT_PERCENTILES)) + " of the time",
         "/".join(map(str, summary.count_pct))),
        ("removals (instances) / additions", f"{summary.removals:,} / {summary.additions:,}"),
        ("removals per hour", f"{summary.removals_per_hour:.2f}"),
        ("removal hazard per instance-hour up", f"{summary.hazard_per_node_hour:.3f}"),
        ("most instances removed at once", f"{summary.largest_removal}"),
    ])


def _figures(summary: Any, source: Path, *, plot: Path | None, json_out: bool, headline: str,
             rows: list[tuple[str, str]], plotted: str, note: str | None = None) -> None:
    """A summary dataclass as JSON, or as a headline over a two-column table of figures."""
    if json_out:
        print_json(asdict(summary) | {"source": str(source), "plot": str(plot) if plot else None})
        return
    out.print(headline)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    for figure, value in rows:
        t.add_row(figure, value)
    out.print(t)
    if note:
        out.print(f"[dim]{note}[/]")
    if plot is not None:
        out.print(f"{plotted}: {plot}")


def _plot(times_s: Any, series: dict[str, Any], path: Path, *, title: str, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = (times_s[-1] - times_s[0]) > 4 * 3600
    x = (times_s - times_s[0]) / (3600 if hours else 60)
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, values in series.items():
        ax.plot(x, values, label=name, linewidth=1.6 if name == "all" else 0.9, color="black" if name == "all" else None)
    ax.set(title=title, xlabel="hours" if hours else "minutes", ylabel=unit)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise InputError("--plot", str(path), f"a writable PNG path ({exc.strerror})") from None
    finally:
        plt.close(fig)


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.1f} minutes"
