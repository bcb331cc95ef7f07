"""Plans and replanning cycles: plan now, list, get, diff, approve, apply (in the background), actions, and
predicted versus observed."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from controller.api.deps import ControllerDep, PlanToken, ReadToken, SessionDep
from controller.api.errors import ApiError, error_responses
from controller.api.plan_views import action_public, plan_diff, plan_document, plan_outcome, summary
from controller.api.routes.fleets import FleetName
from controller.api.schemas import (
    ActionPublic,
    CyclePublic,
    PlanCreateIn,
    PlanDiff,
    PlanOutcomePublic,
    PlanPublic,
    PlanSummary,
)
from controller.replan.cycle import CycleResult, run_cycle
from controller.replan.execute import Conflict, execute_plan, start_apply
from controller.runtime import Controller
from core.fleet import FleetSpec
from db.actions import list_actions
from db.fleets import get_fleet
from db.models import PLAN_STATUSES, FleetRow, PlanRow, ReplanRunRow
from db.plans import get_plan, list_plans, set_plan_status, to_plan
from db.rows import row_by_key
from db.runs import list_replan_runs

router = APIRouter(tags=["plans"])
log = logging.getLogger(__name__)
AUTH = (401, 403, 422, 503)
PlanId = Annotated[str, Path(min_length=1, max_length=128)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def cycle_public(row: ReplanRunRow, fleet: str) -> CyclePublic:
    return CyclePublic(cycle_id=row.cycle_id, fleet=fleet, trigger=row.trigger, outcome=row.outcome,  # type: ignore[arg-type]
                       plan_id=row.plan_id, error=row.error, timings_s=dict(row.timings_s or {}),
                       forecast_ids=list(row.forecast_ids or []), inputs_digest=row.inputs_digest, holder=row.holder,
                       started_at=row.started_at, finished_at=row.finished_at)


def cycle_result_public(result: CycleResult) -> CyclePublic:
    return CyclePublic(cycle_id=result.cycle_id, fleet=result.fleet, trigger=result.trigger,
                       outcome=result.outcome, plan_id=result.plan_id, error=result.error,  # type: ignore[arg-type]
                       timings_s=result.timings_s, forecast_ids=list(result.forecast_ids),
                       inputs_digest=result.inputs_digest, advisory=result.advisory, executed=result.executed,
                       note=result.note or None)


@router.post("/v1/fleets/{name}/plans", response_model=CyclePublic, status_code=201,
             responses=error_responses(404, 409, *AUTH),
             summary="Plan now: run one replanning cycle (201 when a plan was stored, 200 when the cycle failed)")
def create_plan_route(name: FleetName, body: PlanCreateIn, ctl: ControllerDep, response: Response,
                      _: PlanToken) -> CyclePublic:
    if body.fleet_version is not None:
        with ctl.sessions.begin() as s:
            current = get_fleet(s, name=name).current_version
        if current != body.fleet_version:
            raise Conflict("fleet_version", body.fleet_version, f"the fleet's current version ({current})",
                           problem=f"fleet {name!r} changed since version {body.fleet_version}")
    result = run_cycle(ctl, name, trigger="api", policy=body.policy, budget_s=body.budget_s)
    if result.plan_id is None:
        response.status_code = status.HTTP_200_OK
    return cycle_result_public(result)


@router.get("/v1/fleets/{name}/plans", response_model=list[PlanSummary], responses=error_responses(400, 404, *AUTH),
            summary="A fleet's plans, newest first")
def list_plans_route(name: FleetName, session: SessionDep, _: ReadToken, limit: Limit = 50,
                     status_: Annotated[list[str] | None, Query(alias="status", description=", ".join(PLAN_STATUSES))]
                     = None) -> list[PlanSummary]:
    return [summary(r) for r in list_plans(session, fleet=name, statuses=status_, limit=limit)]


@router.get("/v1/fleets/{name}/cycles", response_model=list[CyclePublic], responses=error_responses(404, *AUTH),
            summary="A fleet's replanning cycles, newest first")
def list_cycles(name: FleetName, session: SessionDep, _: ReadToken, limit: Limit = 50) -> list[CyclePublic]:
    return [cycle_public(r, name) for r in list_replan_runs(session, fleet=name, limit=limit)]


@router.get("/v1/cycles/{cycle_id}", response_model=CyclePublic, responses=error_responses(404, *AUTH),
            summary="One replanning cycle")
def get_cycle(cycle_id: Annotated[str, Path(min_length=1, max_length=128)], session: SessionDep,
              _: ReadToken) -> CyclePublic:
    row = row_by_key(session, ReplanRunRow, cycle_id, kind="replanning cycle")
    return cycle_public(row, _fleet_name(session, row.fleet_id))


@router.get("/v1/plans/{plan_id}", response_model=PlanPublic, responses=error_responses(404, *AUTH),
            summary="A plan: target state, actions, expected outcome, solver statistics, reasons, status")
def get_plan_route(plan_id: PlanId, ctl: ControllerDep, _: ReadToken) -> Response:
    # The hot read: one worker-thread trip (no session dependency) and the stored JSON sent as it is.
    with ctl.sessions.begin() as s:
        return JSONResponse(plan_document(get_plan(s, plan_id=plan_id)))


@router.get("/v1/plans/{plan_id}/diff", response_model=PlanDiff, responses=error_responses(404, *AUTH),
            summary="What the plan changes relative to another plan (default: its parent)")
def diff_route(plan_id: PlanId, session: SessionDep, _: ReadToken,
               against: Annotated[str | None, Query(min_length=1, max_length=128)] = None) -> PlanDiff:
    plan = to_plan(get_plan(session, plan_id=plan_id))
    other_id = against or plan.parent_id
    if other_id is None:
        raise ApiError(404, "not_found", f"query.against: plan {plan_id!r} has no parent (it is its fleet's first "
                       "plan), so there is nothing to diff against by default; name a plan with ?against=PLAN_ID",
                       where="query.against", allowed="?against=PLAN_ID: the plan to compare with")
    return plan_diff(plan, to_plan(get_plan(session, plan_id=other_id)))


@router.post("/v1/plans/{plan_id}/approve", response_model=PlanSummary, responses=error_responses(404, 409, *AUTH),
             summary="Approve a proposed plan (advisory mode); refused when the fleet changed since")
def approve(plan_id: PlanId, ctl: ControllerDep, _: PlanToken) -> PlanSummary:
    with ctl.sessions.begin() as s:
        row = get_plan(s, plan_id=plan_id)
        if row.status == "approved":
            return summary(row)
    _check_fleet_unchanged(ctl, row)
    if row.status != "proposed":
        raise Conflict("status", row.status, "a proposed plan", problem=f"plan {plan_id!r} is {row.status}")
    with ctl.sessions.begin() as s:
        return summary(set_plan_status(s, plan_id=plan_id, status="approved"))


@router.post("/v1/plans/{plan_id}/apply", response_model=PlanSummary, status_code=202,
             responses=error_responses(404, 409, *AUTH),
             summary="Apply a plan on the fleet's workers, in the background (poll the plan and its actions)")
def apply(plan_id: PlanId, ctl: ControllerDep, _: PlanToken) -> PlanSummary:
    row, spec = start_apply(ctl, plan_id)
    ctl.background(_execute_locked, ctl, plan_id, spec)
    return summary(row)


@router.get("/v1/plans/{plan_id}/actions", response_model=list[ActionPublic], responses=error_responses(404, *AUTH),
            summary="The plan's actions and where each one is: pending, started, applied, deferred, stale, "
                    "conflict, failed")
def actions(plan_id: PlanId, session: SessionDep, _: ReadToken) -> list[ActionPublic]:
    return [action_public(r) for r in list_actions(session, plan_id=plan_id)]


@router.get("/v1/plans/{plan_id}/outcome", response_model=PlanOutcomePublic, responses=error_responses(404, *AUTH),
            summary="Predicted versus observed: the plan's expected outcome joined with the telemetry that followed")
def outcome(plan_id: PlanId, ctl: ControllerDep, session: SessionDep, _: ReadToken) -> PlanOutcomePublic:
    return plan_outcome(session, get_plan(session, plan_id=plan_id), ctl.clock.now())


def _check_fleet_unchanged(ctl: Controller, row: PlanRow) -> None:
    with ctl.sessions.begin() as s:
        current = get_fleet(s, name=str(row.payload["fleet"])).current_version
    if row.fleet_version != current:
        raise Conflict("fleet_version", row.fleet_version, f"the fleet's current version ({current}); make a new plan",
                       problem=f"fleet {row.payload['fleet']!r} changed since plan {row.plan_id!r} was made")


def _execute_locked(ctl: Controller, plan_id: str, spec: FleetSpec) -> None:
    runtime = ctl.fleet(spec.name)
    with runtime.lock:
        try:
            execute_plan(ctl, plan_id, spec=spec)
        except Exception:
            log.exception("executing plan %s failed", plan_id)


def _fleet_name(session: Session, fleet_id: int) -> str:
    return row_by_key(session, FleetRow, fleet_id, kind="fleet").name

