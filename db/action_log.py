"""`SqlActionLog`: the `core.protocols.ActionLog` on the database, so an executor can be killed and restarted
without applying anything twice.

Every call runs in its own transaction and commits before it returns: a recorded start or outcome survives a
crash of the executor the moment the call returns (SQLite runs with `synchronous=FULL`, PostgreSQL commits are
durable by default). The log shares its tables with the plan API: a plan stored by the controller
(`db.plans.create_plan`) is already recorded, and `record_plan` adds only actions it does not hold yet.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from core.actions import Action, ApplyResult
from core.errors import NotFoundError
from core.plan import Plan
from db.actions import (
    add_missing_actions,
    get_action,
    mark_action_started,
    record_action_outcome,
    to_action,
    to_result,
    unfinished_actions,
)
from db.engine import make_engine, make_sessionmaker
from db.fleets import ensure_fleet
from db.models import PlanRow
from db.plans import create_plan


class SqlActionLog:
    """ActionLog backed by the `plans` and `plan_actions` tables (see `core.protocols.ActionLog`)."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = make_sessionmaker(engine)

    @classmethod
    def from_url(cls, url: str) -> SqlActionLog:
        return cls(make_engine(url))

    def record_plan(self, plan: Plan) -> None:
        """Store `plan` with its actions `pending`; idempotent per plan id.

        A plan first seen here is stored as a non-advisory `proposed` plan of its fleet (created by name if the
        database does not know it yet); its parent, if any, must be stored. For a plan already stored (by the plan
        API, or by an earlier run) only actions it does not have yet — e.g. ones the executor added — are stored;
        recorded actions keep their state.
        """
        for retry in (False, True):
            try:
                with self._sessions.begin() as session:
                    if session.get(PlanRow, plan.plan_id) is None:
                        ensure_fleet(session, name=plan.fleet)
                        create_plan(session, plan=plan, advisory=False)
                    else:
                        add_missing_actions(session, plan=plan)
                return
            except IntegrityError:
                # Another executor stored the same plan or actions between our read and our insert; reading again
                # finds them, which is the idempotent case.
                if retry:
                    raise

    def mark_started(self, key: str, *, attempt: int) -> None:
        with self._sessions.begin() as session:
            mark_action_started(session, key=key, attempt=attempt)

    def record_outcome(self, key: str, result: ApplyResult) -> None:
        with self._sessions.begin() as session:
            record_action_outcome(session, key=key, result=result)

    def outcome(self, key: str) -> ApplyResult | None:
        """The last recorded answer for `key`; None if none was recorded (or the key is unknown)."""
        with self._sessions.begin() as session:
            try:
                return to_result(get_action(session, key=key))
            except NotFoundError:
                return None

    def attempts(self, key: str) -> int:
        """The highest attempt number started for `key` (0 if never started)."""
        with self._sessions.begin() as session:
            return get_action(session, key=key).attempts

    def unfinished(self, plan_id: str) -> list[Action]:
        """Actions of `plan_id` with no recorded answer, in plan order; `NotFoundError` for an unknown plan."""
        with self._sessions.begin() as session:
            return [to_action(row) for row in unfinished_actions(session, plan_id=plan_id)]
