"""Plan actions and their life: pending → started → applied | deferred | stale | conflict | failed.

The last worker answer is kept whole (`result`, the `ApplyResult` as JSON) beside the columns an operator filters
on (status, message, worker revision, duration).

Rows are created with their plan (`db.plans.create_plan`). An action is *unfinished* while it is `pending` or
`started` (sent, no answer recorded); any worker answer is its outcome. Functions take a `Session` and never
commit; `db.action_log.SqlActionLog` wraps them with one committed transaction per call.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.actions import Action, ApplyResult
from core.errors import InputError, NotFoundError
from core.plan import Plan
from db.models import PlanActionRow, PlanRow, utcnow

UNFINISHED = ("pending", "started")
OUTCOME_STATUSES = ("applied", "deferred", "stale", "conflict", "failed")


def action_row(action: Action) -> PlanActionRow:
    """A new `pending` row for `action` (added to its plan by the caller)."""
    return PlanActionRow(
        plan_id=action.plan_id, seq=action.seq, idempotency_key=action.idempotency_key, kind=action.kind,
        worker_id=action.worker_id, depends_on=list(action.depends_on), payload=action.model_dump(mode="json"),
        status="pending", attempts=0,
    )


def add_missing_actions(session: Session, *, plan: Plan) -> int:
    """Store, as `pending`, the actions of `plan` whose keys the stored plan does not have yet (e.g. actions an
    executor added to a stored plan); returns how many were added. Recorded actions are left as they are."""
    known = set(session.scalars(select(PlanActionRow.idempotency_key).where(PlanActionRow.plan_id == plan.plan_id)))
    missing = [action_row(a) for a in plan.actions if a.idempotency_key not in known]
    session.add_all(missing)
    session.flush()
    return len(missing)


def list_actions(session: Session, *, plan_id: str) -> list[PlanActionRow]:
    """Every action of plan `plan_id`, in plan order (seq)."""
    if session.get(PlanRow, plan_id) is None:
        raise NotFoundError("plan", plan_id)
    return list(session.scalars(select(PlanActionRow).where(PlanActionRow.plan_id == plan_id).order_by("seq")))


def unfinished_actions(session: Session, *, plan_id: str) -> list[PlanActionRow]:
    """Actions of `plan_id` with no outcome yet (pending, or started and unanswered), in plan order."""
    return [row for row in list_actions(session, plan_id=plan_id) if row.status in UNFINISHED]


def get_action(session: Session, *, key: str) -> PlanActionRow:
    """The action with idempotency key `key` (`<plan_id>:<seq>`); `NotFoundError` otherwise."""
    row = session.scalar(select(PlanActionRow).where(PlanActionRow.idempotency_key == key))
    if row is None:
        raise NotFoundError("action", key)
    return row


def mark_action_started(session: Session, *, key: str, attempt: int) -> PlanActionRow:
    """Record that attempt number `attempt` (1 for the first send) of action `key` is about to be sent.

    `attempts` keeps the highest attempt number seen, so an executor that restarts and counts again from 1 does
    not make the record go backwards.
    """
    if attempt < 1:
        raise InputError("attempt", attempt, "attempt numbers start at 1")
    row = get_action(session, key=key)
    row.status = "started"
    row.attempts = max(row.attempts, attempt)
    row.started_at = utcnow()
    session.flush()
    return row


def record_action_outcome(session: Session, *, key: str, result: ApplyResult) -> PlanActionRow:
    """Record a worker's answer to action `key` (the last answer wins)."""
    if result.idempotency_key != key:
        raise InputError("result.idempotency_key", result.idempotency_key, f"the key of the action ({key!r})")
    row = get_action(session, key=key)
    row.status = result.status
    row.last_message = result.message
    row.worker_revision = result.worker_revision
    row.duration_s = result.duration_s
    row.result = result.model_dump(mode="json")
    row.finished_at = utcnow()
    session.flush()
    return row


def to_action(row: PlanActionRow) -> Action:
    """The `core.actions.Action` a row stores."""
    return Action.model_validate(row.payload)


def to_result(row: PlanActionRow) -> ApplyResult | None:
    """The last recorded worker answer of a row, or None while the action is unfinished."""
    if row.status not in OUTCOME_STATUSES or row.result is None:
        return None
    return ApplyResult.model_validate(row.result)
