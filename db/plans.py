"""Plans and their lifecycle.

A stored plan is immutable (its payload is the `core.plan.Plan`); only its status moves, along
`PLAN_TRANSITIONS`: proposed → approved → applying → applied | failed, and any plan not yet finished may be
superseded by a newer one. Creating a plan also stores its actions as `pending` (see `db.actions`). Functions take
a `Session` and never commit.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.errors import ConflictError, InputError, NotFoundError
from core.plan import Plan
from db.actions import action_row
from db.fleets import get_fleet
from db.models import PLAN_STATUSES, PlanRow
from db.rows import add_row, row_by_key

PLAN_TRANSITIONS: dict[str, frozenset[str]] = {
    "proposed": frozenset({"approved", "applying", "failed", "superseded"}),
    "approved": frozenset({"applying", "failed", "superseded"}),
    "applying": frozenset({"applied", "failed", "superseded"}),
    "applied": frozenset({"superseded"}),
    "failed": frozenset(),
    "superseded": frozenset(),
}
"""status → statuses it may move to. `proposed → applying` is the non-advisory path (applied without approval)."""


def create_plan(session: Session, *, plan: Plan, advisory: bool, fleet_version: int | None = None) -> PlanRow:
    """Store `plan` as `proposed`, with its actions `pending`; returns the row.

    The plan is recorded against `fleet_version` (default: the fleet's current version). A version other than the
    current one is refused with an `InputError`: the fleet changed since the plan was made. A plan id that is
    already stored is an `InputError` too (plans are immutable; make a new one).
    """
    fleet = get_fleet(session, name=plan.fleet)
    current = fleet.current_version or None
    if fleet_version is not None and fleet_version != current:
        raise InputError(
            "fleet_version", fleet_version, f"the fleet's current version ({current}): fleet {fleet.name!r} "
            "changed since this plan was made; replan", problem=f"plan {plan.plan_id!r} was made for version "
            f"{fleet_version}",
        )
    if session.get(PlanRow, plan.plan_id) is not None:
        raise InputError("plan_id", plan.plan_id, "a new plan id (stored plans are immutable)",
                         problem=f"plan {plan.plan_id!r} already exists")
    if plan.parent_id is not None and session.get(PlanRow, plan.parent_id) is None:
        raise NotFoundError("parent plan", plan.parent_id)
    row = PlanRow(
        plan_id=plan.plan_id, fleet_id=fleet.id, fleet_version=current, parent_id=plan.parent_id,
        generation=plan.generation, policy=plan.policy, status="proposed", advisory=advisory,
        created_at_s=plan.created_at_s, input_digest=plan.input_digest,
        expected=plan.expected.overall.model_dump(mode="json") if plan.expected else None,
        payload=plan.model_dump(mode="json"),
    )
    row.actions = [action_row(a) for a in plan.actions]
    return add_row(session, row)


def get_plan(session: Session, *, plan_id: str) -> PlanRow:
    """The stored plan `plan_id`; `NotFoundError` otherwise."""
    return row_by_key(session, PlanRow, plan_id, kind="plan")


def to_plan(row: PlanRow) -> Plan:
    """The `core.plan.Plan` a row stores."""
    return Plan.model_validate(row.payload)


def list_plans(
    session: Session, *, fleet: str, statuses: Collection[str] | None = None, limit: int = 50
) -> list[PlanRow]:
    """Plans of `fleet`, newest generation first (then newest stored), optionally only those in `statuses`."""
    fleet_id = get_fleet(session, name=fleet).id
    query = select(PlanRow).where(PlanRow.fleet_id == fleet_id)
    if statuses is not None:
        _check_statuses(statuses)
        query = query.where(PlanRow.status.in_(list(statuses)))
    order = (PlanRow.generation.desc(), PlanRow.stored_at.desc(), PlanRow.plan_id)
    return list(session.scalars(query.order_by(*order).limit(limit)))


def latest_plan(session: Session, *, fleet: str, statuses: Collection[str] | None = None) -> PlanRow | None:
    """The newest plan of `fleet` (in `statuses`, if given), or None."""
    rows = list_plans(session, fleet=fleet, statuses=statuses, limit=1)
    return rows[0] if rows else None


def set_plan_status(session: Session, *, plan_id: str, status: str, message: str | None = None) -> PlanRow:
    """Move plan `plan_id` to `status`; an `InputError` says which moves are allowed from where it is.

    Setting the status it already has is a no-op (so a retried request does not fail).
    """
    row = get_plan(session, plan_id=plan_id)
    _check_statuses([status])
    if status == row.status:
        return row
    allowed = PLAN_TRANSITIONS[row.status]
    if status not in allowed:
        options = ", ".join(sorted(allowed)) or "none (final)"
        raise InputError("status", status, f"from {row.status!r} a plan may move to: {options}",
                         problem=f"plan {plan_id!r} is {row.status!r}; it cannot become {status!r}")
    # Compare and set: two requests that both read the old status (say, two applies of one approved plan) must
    # not both move it; the second finds the status changed and is refused.
    moved = session.execute(
        update(PlanRow).where(PlanRow.plan_id == row.plan_id, PlanRow.status == row.status)
        .values(status=status, status_message=message).execution_options(synchronize_session=False)
    ).rowcount
    was = row.status
    session.refresh(row)
    if moved != 1:
        raise ConflictError("status", status, "retry: read the plan again",
                            problem=f"plan {plan_id!r} moved from {was!r} to {row.status!r} in another request "
                            f"while this one was moving it to {status!r}")
    return row


def supersede_older(session: Session, *, fleet: str, keep_plan_id: str) -> list[str]:
    """Mark every unfinished plan of `fleet` except `keep_plan_id` as superseded; returns their ids."""
    fleet_id = get_fleet(session, name=fleet).id
    live = [s for s, nxt in PLAN_TRANSITIONS.items() if "superseded" in nxt]
    rows = session.scalars(
        select(PlanRow).where(
            PlanRow.fleet_id == fleet_id, PlanRow.status.in_(live), PlanRow.plan_id != keep_plan_id
        )
    )
    done = []
    for row in rows:
        row.status = "superseded"
        row.status_message = f"superseded by {keep_plan_id}"
        done.append(row.plan_id)
    session.flush()
    return done


def _check_statuses(statuses: Collection[str]) -> None:
    bad = next((s for s in statuses if s not in PLAN_STATUSES), None)
    if bad is not None:
        raise InputError("status", bad, f"one of {', '.join(PLAN_STATUSES)}")
