"""`fleetwise plan FLEET`: one replanning cycle from the command line — the same cycle the cron runs — printed as
Rich tables (or JSON). The plan is stored; it is executed when the fleet has an executor backend and is not
advisory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from controller.commands.db import UrlOption
from controller.commands.serve import WorkersOption, open_controller
from controller.console import err, out, print_json

if TYPE_CHECKING:
    from core.plan import Plan


def plan(
    fleet: Annotated[str, typer.Argument(help="Fleet name (stored), or with --fleet-file the fleet to store first.")],
    fleet_file: Annotated[Path | None, typer.Option("--fleet-file", help="Store this fleet YAML (as a new version "
                                                    "when changed) before planning.")] = None,
    policy: Annotated[str | None, typer.Option(help="Planner: fleetwise, dedicated, muxserve, qlm, prism "
                                               "(default: the fleet's).")] = None,
    budget: Annotated[float | None, typer.Option("--budget", help="Planner budget, seconds.", min=0.01,
                                                 max=600)] = None,  # settings.plan_budget_s allows ≤ 600 s
    url: UrlOption = None,
    workers_file: WorkersOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the cycle and the plan as JSON.")] = False,
) -> None:
    """Run one replanning cycle for FLEET and print its plan."""
    from controller.replan.cycle import run_cycle
    from controller.settings import POLICIES
    from core.errors import InputError
    from core.fleet import load_fleet
    from db.fleets import put_fleet
    from db.plans import get_plan, to_plan

    if policy is not None and policy not in POLICIES:
        raise InputError("--policy", policy, f"one of {', '.join(POLICIES)}")
    ctl = open_controller(url, workers_file=workers_file)
    try:
        if fleet_file is not None:
            spec = load_fleet(fleet_file)
            if spec.name != fleet:
                raise InputError("--fleet-file", str(fleet_file), f"a fleet named {fleet!r} (it names {spec.name!r})")
            with ctl.sessions.begin() as s:
                put_fleet(s, spec=spec)
        with err.status(f"planning {fleet} …"):
            result = run_cycle(ctl, fleet, trigger="cli", policy=policy, budget_s=budget)
        stored = None
        if result.plan_id is not None:
            with ctl.sessions.begin() as s:
                row = get_plan(s, plan_id=result.plan_id)
                stored = (to_plan(row), row.status)
    finally:
        ctl.close()
    if json_out:
        print_json({"cycle": _cycle_dict(result), "status": stored[1] if stored else None,
                    "plan": stored[0].model_dump(mode="json") if stored else None})
    else:
        _print(result, stored)
    if result.outcome == "failed":
        raise typer.Exit(1)


def _cycle_dict(result) -> dict:
    return {"cycle_id": result.cycle_id, "fleet": result.fleet, "outcome": result.outcome, "plan_id": result.plan_id,
            "advisory": result.advisory, "executed": result.executed, "error": result.error, "note": result.note,
            "timings_s": result.timings_s, "forecast_ids": list(result.forecast_ids),
            "execution": result.execution.model_dump(mode="json") if result.execution else None}


def _print(result, stored: tuple[Plan, str] | None) -> None:
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings_s.items())
    colour = "red" if result.outcome == "failed" else "green"
    out.print(f"cycle [bold]{result.cycle_id}[/]: [{colour}]{result.outcome}[/] ({timings})")
    if result.error:
        out.print(f"[red]error:[/] {result.error}", highlight=False)
    if stored is None:
        return
    plan, status = stored
    out.print(plan_table(plan))
    if plan.expected is not None:
        e = plan.expected.overall
        classes = ", ".join(f"{k} {v:.1%}" for k, v in e.per_class.items())
        out.print(f"expected: SLO attainment {e.slo_attainment:.1%} ({classes}); {e.gpu_hours:.2f} GPU-h, "
                  f"${e.cost_usd:.2f} over {plan.horizon_s / 60:.0f} min")
    counts = ", ".join(f"{k} ×{n}" for k, n in sorted(plan.action_counts().items())) or "none"
    out.print(f"plan [bold]{plan.plan_id}[/] ({plan.policy}, generation {plan.generation}) is [bold]{status}[/]; "
              f"actions: {counts}; solver {plan.solver.name} {plan.solver.status} in {plan.solver.time_s:.2f} s")
    for reason in plan.reasons[:8]:
        out.print(f"  · {reason}", highlight=False)
    if result.note:
        out.print(result.note)


def plan_table(plan: Plan) -> Table:
    """The plan's replicas: model, GPUs, TP, KV share, residency, routing weight."""
    table = Table("model", "replica", "GPUs", "TP", "KV GiB/GPU", "residency", "routing", title=f"Plan {plan.plan_id}")
    for r in sorted(plan.replicas, key=lambda r: (r.model, r.replica_id)):
        weights = plan.routing.get(r.model, {})
        share = weights.get(r.replica_id, 0.0) / sum(weights.values()) if sum(weights.values()) else 0.0
        table.add_row(r.model, r.replica_id, ", ".join(r.gpu_ids), str(r.tp), f"{r.kv_share_gib:.1f}",
                      str(r.residency), f"{share:.0%}")
    return table
