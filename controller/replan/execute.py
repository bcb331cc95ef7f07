"""Carrying a stored plan out: checks that it may be applied, moves it to `applying`, runs it with the executor
(`executors.PlanExecutor` over the fleet's backend, every step in `db.action_log.SqlActionLog`), then records how it
ended: `applied` (every action took effect, or some did: `partially applied: …` in its message) and older plans
superseded, or `failed`. The failed actions become `action_failed` events of the fleet's next cycle.

`check_applicable` is the whole of the refusal logic, run before anything is written, so a refused apply leaves
the database as it was.
"""

from __future__ import annotations

from controller.runtime import Controller
from core.errors import ConflictError
from core.fleet import FleetSpec
from core.plan import Plan
from db.fleets import fleet_spec, get_fleet
from db.models import PlanRow
from db.plans import get_plan, set_plan_status, supersede_older, to_plan
from executors import ExecutionReport, PlanExecutor, WorkerSet

Conflict = ConflictError  # the refusals below: a fleet changed since the plan, a plan's status, no backend


def check_applicable(row: PlanRow, *, current_version: int, has_backend: bool, approved_only: bool) -> None:
    """Refuse (with a `Conflict`) to apply a plan made for an older fleet version, one that is not proposed or
    approved, one of a fleet without workers, or — for advisory plans, or when `approved_only` — one not yet
    approved."""
    fleet = str(row.payload["fleet"])
    if row.fleet_version != current_version:
        raise Conflict("fleet_version", row.fleet_version, f"the fleet's current version ({current_version}); make a "
                       "new plan", problem=f"fleet {fleet!r} changed since plan {row.plan_id!r} was made")
    if row.status not in ("proposed", "approved"):
        raise Conflict("status", row.status, "a proposed or approved plan",
                       problem=f"plan {row.plan_id!r} is {row.status}; it cannot be applied")
    if (row.advisory or approved_only) and row.status != "approved":
        raise Conflict("status", row.status, "approve the plan first (POST /v1/plans/{plan_id}/approve)",
                       problem=f"plan {row.plan_id!r} is advisory and not approved")
    if not has_backend:
        raise Conflict("fleet", fleet, "a fleet with an executor backend (FLEETWISE_WORKERS_FILE)",
                       problem=f"fleet {fleet!r} has no workers the controller can reach")


def start_apply(ctl: Controller, plan_id: str, *, approved_only: bool = False) -> tuple[PlanRow, FleetSpec]:
    """Check plan `plan_id` and mark it `applying`, in one transaction (a refusal writes nothing); returns the row
    and the fleet's spec, for `execute_plan`."""
    with ctl.sessions.begin() as s:
        row = get_plan(s, plan_id=plan_id)
        fleet = str(row.payload["fleet"])
        current = get_fleet(s, name=fleet).current_version
        spec = fleet_spec(s, name=fleet)
        check_applicable(row, current_version=current, has_backend=ctl.backends.get(fleet, spec) is not None,
                         approved_only=approved_only)
        return set_plan_status(s, plan_id=plan_id, status="applying"), spec


def execute_plan(ctl: Controller, plan_id: str, *, spec: FleetSpec | None = None) -> ExecutionReport:
    """Run an `applying` plan on its fleet's workers and record the outcome (see the module docstring). `spec` (the
    fleet's spec at the plan's version) saves reading it again."""
    with ctl.sessions.begin() as s:
        row = get_plan(s, plan_id=plan_id)
        plan = to_plan(row)
        if spec is None:
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
