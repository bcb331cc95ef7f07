"""Views of stored plans: summaries, the difference between two plans, their actions, and a plan's prediction
joined with the telemetry that followed it.

Predicted versus observed: a plan is in force from its creation (`created_at_s`, the controller's clock) until the
next plan of the fleet that was applied or superseded (a newer plan took over), or until now. Over that window the telemetry gives the requests that
arrived, how many completed within both SLO targets of their class (a dropped request misses), the goodput (output
tokens of those requests per second) and the cost of the GPUs the plan keeps active. The prediction covers the
plan's horizon, so costs are compared per hour.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from controller.api.schemas import (
    ActionPublic,
    ObservedOutcome,
    PlanDiff,
    PlanOutcomePublic,
    PlanPublic,
    PlanSummary,
    ReplicaChange,
    RoutingChange,
)
from core.actions import Residency
from core.fleet import FleetSpec
from core.plan import Plan
from db.fleets import fleet_spec
from db.models import PlanActionRow, PlanRow
from db.plans import list_plans, to_plan
from db.telemetry import read_telemetry

SECONDS_PER_HOUR = 3600.0
FOLLOWERS = ("applying", "applied", "superseded")  # statuses of plans that may have ended an earlier plan's window


def summary(row: PlanRow, *, full: bool = False) -> PlanSummary:
    fields = _summary_fields(row)
    return PlanPublic(**fields, plan=to_plan(row)) if full else PlanSummary(**fields)


def plan_document(row: PlanRow) -> dict[str, Any]:
    """`PlanPublic` as JSON, without validating the stored plan again: it was validated when it was stored and is
    immutable, and re-validating a large plan on every GET is most of the route's time."""
    return {**PlanSummary(**_summary_fields(row)).model_dump(mode="json"), "plan": row.payload}


def _summary_fields(row: PlanRow) -> dict[str, Any]:
    payload = row.payload
    return {"plan_id": row.plan_id, "fleet": payload["fleet"], "fleet_version": row.fleet_version,
            "parent_id": row.parent_id, "generation": row.generation, "policy": row.policy, "status": row.status,
            "status_message": row.status_message, "advisory": row.advisory, "created_at_s": row.created_at_s,
            "expected": row.expected, "num_actions": len(payload.get("actions", ())), "stored_at": row.stored_at}


def plan_diff(plan: Plan, against: Plan) -> PlanDiff:
    """What `plan` adds, removes and changes relative to `against` (replicas by id, routing by model)."""
    new = {r.replica_id: r for r in plan.replicas}
    old = {r.replica_id: r for r in against.replicas}
    changed = [ReplicaChange(replica_id=k, before=old[k], after=new[k]) for k in sorted(new.keys() & old.keys())
               if old[k] != new[k]]
    routing = [RoutingChange(model=m, before=against.routing.get(m, {}), after=plan.routing.get(m, {}))
               for m in sorted(plan.routing.keys() | against.routing.keys())
               if plan.routing.get(m, {}) != against.routing.get(m, {})]
    return PlanDiff(
        plan_id=plan.plan_id, against=against.plan_id,
        replicas_added=[new[k] for k in sorted(new.keys() - old.keys())],
        replicas_removed=[old[k] for k in sorted(old.keys() - new.keys())], replicas_changed=changed,
        routing_changed=routing, gpus_before=against.num_gpus, gpus_after=plan.num_gpus,
        expected_before=against.expected.overall if against.expected else None,
        expected_after=plan.expected.overall if plan.expected else None,
    )


def action_public(row: PlanActionRow) -> ActionPublic:
    return ActionPublic(
        seq=row.seq, idempotency_key=row.idempotency_key, kind=row.kind, worker_id=row.worker_id, status=row.status,
        attempts=row.attempts, message=row.last_message, worker_revision=row.worker_revision,
        duration_s=row.duration_s, depends_on=list(row.depends_on), reason=str(row.payload.get("reason", "")),
        started_at=row.started_at, finished_at=row.finished_at,
    )


def plan_outcome(session: Session, row: PlanRow, now_s: float) -> PlanOutcomePublic:
    """The plan's prediction next to what followed it (see the module docstring)."""
    plan = to_plan(row)
    spec = fleet_spec(session, name=plan.fleet, version=row.fleet_version) if row.fleet_version else \
        fleet_spec(session, name=plan.fleet)
    start = row.created_at_s
    later = list_plans(session, fleet=plan.fleet, statuses=FOLLOWERS, limit=1000)
    end = min([r.created_at_s for r in later if r.generation > row.generation and r.created_at_s >= start],
              default=max(now_s, start))
    observed = observe_window(session, plan, spec, start, end)
    hours = max(plan.horizon_s, 0.0) / SECONDS_PER_HOUR
    predicted = plan.expected.overall if plan.expected else None
    window_h = max(end - start, 0.0) / SECONDS_PER_HOUR
    return PlanOutcomePublic(
        plan_id=row.plan_id, status=row.status, window_start_s=start, window_end_s=end, horizon_s=plan.horizon_s,
        predicted=predicted,
        predicted_cost_usd_per_hour=predicted.cost_usd / hours if predicted is not None and hours > 0 else None,
        observed=observed, observed_cost_usd_per_hour=observed.cost_usd / window_h if window_h > 0 else 0.0,
    )


def observe_window(session: Session, plan: Plan, spec: FleetSpec, start_s: float, end_s: float) -> ObservedOutcome:
    table, outcomes = read_telemetry(session, fleet=plan.fleet, start_s=start_s, end_s=max(end_s, start_s + 1e-9))
    n = len(table)
    labels = outcomes.labels("outcome") if n else np.zeros(0, object)
    completed = labels == "completed"
    met = np.zeros(n, bool)
    per_class: dict[str, float] = {}
    for c in spec.slo_classes:
        if c.name not in table.slo_names:
            continue
        rows = table.slo_idx == table.slo_names.index(c.name)
        ok = completed & rows
        if c.online and c.ttft_s is not None and c.tpot_s is not None:
            ok &= np.nan_to_num(outcomes.ttft_s, nan=np.inf) <= c.ttft_s
            ok &= np.nan_to_num(outcomes.tpot_s, nan=0.0) <= c.tpot_s
        met |= ok
        per_class[c.name] = float(ok.sum() / rows.sum()) if rows.any() else 1.0
    window_s = max(end_s - start_s, 1e-9)
    gpu_hours, cost = _gpu_cost(plan, spec, window_s)
    return ObservedOutcome(
        num_requests=n, completed=int(completed.sum()), dropped=int((labels == "dropped").sum()),
        slo_attainment=float(met.sum() / n) if n else None, per_class=per_class,
        goodput_tokens_per_s=float(table.output_tokens[met].sum() / window_s), gpu_hours=gpu_hours, cost_usd=cost,
    )


def _gpu_cost(plan: Plan, spec: FleetSpec, window_s: float) -> tuple[float, float]:
    """GPU-hours and cost of the GPUs the plan keeps active over the window, at each pool's hourly price."""
    gpus = {g: r.pool for r in plan.replicas if r.residency == Residency.ACTIVE for g in r.gpu_ids}
    price = {p.name: p.hourly_price for p in spec.pools}
    hours = window_s / SECONDS_PER_HOUR
    return len(gpus) * hours, sum(price.get(pool, 0.0) for pool in gpus.values()) * hours
