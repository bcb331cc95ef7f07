"""Carrying a stored plan out: checks that it may be applied, moves it to `applying`, runs it with the executor
(`executors.PlanExecutor` over the fleet's backend, every step in `db.action_log.SqlActionLog`), then records how it
ended: `applied` (every action took effect, or some did: `partially applied: …` in its message) and older plans
superseded, or `failed`. The failed actions become `action_failed` events of the fleet's next cycle.

`check_applicable` is the whole of the refusal logic, run before anything is written, so a refused apply leaves
the database as it was.
"""

from __future__ import annotations

from controller.fleet_settings import fleet_settings
from controller.runtime import Controller
from core.errors import InputError
from core.fleet import FleetSpec
from core.plan import Plan
from db.fleets import fleet_spec, get_fleet
from db.models import PlanRow
from db.plans import get_plan, set_plan_status, supersede_older, to_plan
from executors import ExecutionReport, PlanExecutor, WorkerSet


class Conflict(InputError):
    """The request is well-formed but the state it acts on forbids it (HTTP 409): the fleet changed since the plan
    was made, a plan is not in a status that allows the move, a fleet has no executor backend."""


def check_applicable(ctl: Controller, row: PlanRow, *, approved_only: bool) -> FleetSpec:
    """Refuse (with a `Conflict`) to apply a plan made for an older fleet version, one that is not proposed or
    approved, or — for advisory plans, or when `approved_only` — one not yet approved."""
    fleet = str(row.payload["fleet"])
    with ctl.sessions.begin() as s:
        current = get_fleet(s, name=fleet).current_version
        spec = fleet_spec(s, name=fleet)
    if row.fleet_version != current:
        raise Conflict("fleet_version", row.fleet_version, f"the fleet's current version ({current}); make a new "
                       "plan", problem=f"fleet {fleet!r} changed since plan {row.plan_id!r} was made")
    if row.status not in ("proposed", "approved"):
        raise Conflict("status", row.status, "a proposed or approved plan",
                       problem=f"plan {row.plan_id!r} is {row.status}; it cannot be applied")
    if (row.advisory or approved_only) and row.status != "approved":
        raise Conflict("status", row.status, "approve the plan first (POST /v1/plans/{plan_id}/approve)",
                       problem=f"plan {row.plan_id!r} is advisory and not approved")
    if ctl.backends.get(fleet, spec) is None:
        raise Conflict("fleet", fleet, "a fleet with an executor backend (FLEETWISE_WORKERS_FILE)",
                       problem=f"fleet {fleet!r} has no workers the controller can reach")
    return spec


def start_apply(ctl: Controller, plan_id: str, *, approved_only: bool = False) -> PlanRow:
    """Check and mark plan `plan_id` `applying` (committed); the caller then runs `execute_plan`."""
    with ctl.sessions.begin() as s:
        row = get_plan(s, plan_id=plan_id)
    check_applicable(ctl, row, approved_only=approved_only)
    with ctl.sessions.begin() as s:
        return set_plan_status(s, plan_id=plan_id, status="applying")


def execute_plan(ctl: Controller, plan_id: str) -> ExecutionReport:
    """Run an `applying` plan on its fleet's workers and record the outcome (see the module docstring)."""
    with ctl.sessions.begin() as s:
        row = get_plan(s, plan_id=plan_id)
        plan = to_plan(row)
        spec = fleet_spec(s, name=plan.fleet, version=row.fleet_version)
    workers = ctl.backends.get(plan.fleet, spec)
    runtime = ctl.fleet(plan.fleet)
    try:
        report = _run(ctl, plan, workers)
    except Exception as exc:
        with ctl.sessions.begin() as s:
            set_plan_status(s, plan_id=plan_id, status="failed", message=f"executor error: {exc}")
        raise
    runtime.events = report.events(ctl.clock.now())
    for record in report.actions:
        ctl.metrics.actions.labels(state=record.state).inc()
    with ctl.sessions.begin() as s:
        if report.outcome == "failed" and report.actions:
            set_plan_status(s, plan_id=plan_id, status="failed", message="; ".join(report.replan_reasons)[:2000])
        else:
            note = "" if report.outcome == "applied" else "partially applied: " + "; ".join(report.replan_reasons)
            set_plan_status(s, plan_id=plan_id, status="applied", message=note[:2000] or None)
            supersede_older(s, fleet=plan.fleet, keep_plan_id=plan_id)
    return report


def _run(ctl: Controller, plan: Plan, workers: WorkerSet | None) -> ExecutionReport:
    if workers is None:
        raise Conflict("fleet", plan.fleet, "a fleet with an executor backend",
                       problem=f"fleet {plan.fleet!r} has no executor backend")
    return PlanExecutor(workers, ctl.action_log).execute(plan)


def advisory_for(ctl: Controller, spec: FleetSpec) -> bool:
    return fleet_settings(spec, ctl.settings).advisory
