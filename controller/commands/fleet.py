"""`fleetwise fleet check FLEET.yaml`: validate a fleet and summarise pools, spot pools' availability traces, models
and what fits where."""

from __future__ import annotations

from dataclasses import asdict
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from controller.console import out, print_json
from controller.fleet_settings import check_labels
from core.catalog import GIB
from core.fleet import FitRow, FleetSpec, load_fleet

if TYPE_CHECKING:
    from workloads.summary import AvailabilitySummary

app = typer.Typer(help="Fleet specs: validate and summarise.", no_args_is_help=True)

FleetPath = Annotated[Path, typer.Argument(help="Fleet YAML file (apiVersion: fleetwise/v1, kind: Fleet).")]


@app.command("check")
def check(
    path: FleetPath,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Validate FLEET.yaml; print GPUs and memory per pool, the spot pools' availability traces, model sizes, and
    which models fit where at which TP."""
    fleet = load_fleet(path)
    check_labels(fleet)  # the controller refuses a fleet whose fleetwise/* labels it cannot use; so does check
    traces = _spot_traces(fleet, path.parent)  # a trace that cannot be read fails here, not in a later what-if
    if json_out:
        print_json(summary(fleet) | {"availability_traces": {p: asdict(t) for p, t in traces.items()}})
        return
    out.print(f"[bold]{fleet.name}[/] — {fleet.metadata.description or 'fleet'}  [green]✓ valid[/]")
    out.print(_pools_table(fleet))
    if traces:
        out.print(_traces_table(fleet, traces))
    out.print(_models_table(fleet))
    out.print(_fit_table(fleet))


def _spot_traces(fleet: FleetSpec, fleet_dir: Path) -> dict[str, AvailabilitySummary]:
    """The availability trace of every pool that names one, summarised (`workloads.summary`)."""
    from simulator.availability import read_pool_trace
    from workloads.summary import summarize_availability

    return {p.name: summarize_availability(read_pool_trace(p, fleet_dir)) for p in fleet.pools if p.availability_trace}


def _traces_table(fleet: FleetSpec, traces: dict[str, AvailabilitySummary]) -> Table:
    t = Table(title="Spot availability traces (whatif replays them)", title_justify="left")
    for col in ("pool", "trace", "span", "instances up min–max (mean)", "removals/h", "hazard /instance-h"):
        t.add_column(col, justify="left" if col in ("pool", "trace") else "right")
    notes = []
    for name, a in traces.items():
        t.add_row(name, a.name, f"{a.duration_s / 3600:.1f} h", f"{a.min_count}–{a.max_count} ({a.mean_count:.1f})",
                  f"{a.removals_per_hour:.2f}", f"{a.hazard_per_node_hour:.3f}")
        count = fleet.pool(name).count
        if a.max_count > count:
            notes.append(f"{name}: the trace reaches {a.max_count} instances, the pool has {count} (capped)")
    t.caption = "; ".join(notes) or None
    return t


def summary(fleet: FleetSpec) -> dict[str, object]:
    """The summary `fleet check --json` prints."""
    return {
        "name": fleet.name,
        "num_gpus": fleet.num_gpus,
        "pools": [
            {
                "name": p.name, "gpu": p.gpu.name, "count": p.count, "nodes": p.num_nodes, "spot": p.spot,
                "memory_gib_per_gpu": p.gpu.memory_gib, "memory_gib_total": p.gpu.memory_gib * p.count,
                "price_per_hour": p.hourly_price,
            }
            for p in fleet.pools
        ],
        "models": [
            {
                "name": m.name, "arch": m.arch.name, "weight_gib": round(m.weight_gib, 3),
                "kv_kib_per_token": m.kv_bytes_per_token / 1024, "max_context_tokens": m.max_context_tokens,
                "tp_options": list(m.tp_options),
            }
            for m in fleet.models
        ],
        "fit": [row.__dict__ for row in _distinct_fit_rows(fleet)],
        "slo_classes": [c.model_dump() for c in fleet.slo_classes],
    }


def _pools_table(fleet: FleetSpec) -> Table:
    t = Table(title="GPU pools", title_justify="left")
    for col in ("pool", "GPU", "GPUs", "nodes", "GiB/GPU", "GiB total", "usable GiB/GPU", "spot", "$/GPU-h"):
        t.add_column(col, justify="left" if col in ("pool", "GPU") else "right")
    for p in fleet.pools:
        usable = fleet.usable_bytes_per_gpu(p.gpu) / GIB
        t.add_row(
            p.name, p.gpu.name, str(p.count), str(p.num_nodes), f"{p.gpu.memory_gib:g}",
            f"{p.gpu.memory_gib * p.count:,.0f}", f"{usable:.1f}", "yes" if p.spot else "no", f"{p.hourly_price:.2f}",
        )
    t.caption = f"{fleet.num_gpus} GPUs in all"
    return t


def _models_table(fleet: FleetSpec) -> Table:
    t = Table(title="Models", title_justify="left")
    for col in ("model", "arch", "params (B)", "weights GiB", "KV KiB/token", "max context", "TP options"):
        t.add_column(col, justify="left" if col in ("model", "arch", "TP options") else "right")
    for _, group in groupby(fleet.models, key=lambda m: m.spec_index):
        models = list(group)
        m = models[0]
        name = m.name if len(models) == 1 else f"{m.name} … {models[-1].name} ({len(models)} models)"
        t.add_row(
            name, m.arch.name, f"{m.arch.params_b:g}", f"{m.weight_gib:.2f}", f"{m.kv_bytes_per_token / 1024:g}",
            f"{m.max_context_tokens:,}", ", ".join(map(str, m.tp_options)),
        )
    return t


def _distinct_fit_rows(fleet: FleetSpec) -> list[FitRow]:
    """One fit row per (spec entry, GPU type, TP): copies of a template fit identically."""
    first_of_entry = {m.spec_index: m.name for m in reversed(fleet.models)}
    keep = set(first_of_entry.values())
    return [r for r in fleet.fit_table() if r.model in keep]


def _fit_table(fleet: FleetSpec) -> Table:
    t = Table(title="Fit: weights per GPU and KV room per replica", title_justify="left")
    t.add_column("model")
    gpu_types = list(dict.fromkeys(p.gpu.name for p in fleet.pools))
    for g in gpu_types:
        t.add_column(g)
    rows = _distinct_fit_rows(fleet)
    for model, group in groupby(rows, key=lambda r: r.model):
        by_gpu = {g: [r for r in group_rows if r.gpu_type == g] for group_rows in [list(group)] for g in gpu_types}
        t.add_row(model, *(_fit_cell(by_gpu[g]) for g in gpu_types))
    t.caption = "TP=n: fits with KV room for k tokens per replica; ✗: does not fit (reason)"
    return t


def _fit_cell(rows: list[FitRow]) -> str:
    if not rows:
        return "[dim]-[/]"
    cells = []
    for r in rows:
        if r.fits:
            cells.append(f"[green]TP={r.tp}[/] {r.weight_gib_per_gpu:.1f} GiB, KV {r.kv_capacity_tokens / 1000:,.0f}k tok")
        else:
            cells.append(f"[red]TP={r.tp} ✗[/] {r.reason}")
    return "\n".join(cells)
