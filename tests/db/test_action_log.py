"""SqlActionLog keeps the ActionLog contract across crashes: a new engine (or a killed process) sees exactly what
was recorded before, and `unfinished` lists what must be re-sent, in plan order."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import Engine

from core.actions import ApplyResult
from core.errors import NotFoundError
from core.protocols import ActionLog
from db.action_log import SqlActionLog
from db.engine import make_engine
from tests.db.builders import make_plan
from tests.factories import ROOT


def test_it_is_an_action_log(engine: Engine) -> None:
    assert isinstance(SqlActionLog(engine), ActionLog)


def test_state_survives_a_new_engine(engine: Engine, db_url: str) -> None:
    plan = make_plan()
    log = SqlActionLog(engine)
    log.record_plan(plan)
    key0, key1, key2 = (a.idempotency_key for a in plan.actions)
    log.mark_started(key0, attempt=1)
    log.record_outcome(key0, ApplyResult(idempotency_key=key0, status="applied", worker_revision=1, duration_s=2.5))
    log.mark_started(key1, attempt=1)  # sent; the executor dies before the worker answers
    engine.dispose()

    fresh_engine = make_engine(db_url)
    fresh = SqlActionLog(fresh_engine)
    fresh.record_plan(plan)  # a restarted executor records again: nothing changes
    assert fresh.outcome(key0) == ApplyResult(idempotency_key=key0, status="applied", worker_revision=1,
                                              duration_s=2.5)
    assert fresh.outcome(key1) is None and fresh.outcome("no-such:0") is None
    assert fresh.unfinished(plan.plan_id) == [plan.actions[1], plan.actions[2]]
    fresh.mark_started(key1, attempt=2)
    failed = ApplyResult(idempotency_key=key1, status="failed", message="worker timed out", retriable=True)
    fresh.record_outcome(key1, failed)
    fresh.record_outcome(key2, ApplyResult(idempotency_key=key2, status="stale"))
    assert fresh.unfinished(plan.plan_id) == []
    assert fresh.outcome(key1) == failed and fresh.attempts(key1) == 2
    fresh_engine.dispose()


def test_records_survive_a_killed_process(db_url: str) -> None:
    """The process records, then SIGKILLs itself: whatever returned before the kill must be there."""
    plan = make_plan()
    script = textwrap.dedent(f"""
        import os, signal
        from core.actions import ApplyResult
        from db.action_log import SqlActionLog
        from tests.db.builders import make_plan
        log = SqlActionLog.from_url({db_url!r})
        plan = make_plan()
        log.record_plan(plan)
        key = plan.actions[0].idempotency_key
        log.mark_started(key, attempt=1)
        log.record_outcome(key, ApplyResult(idempotency_key=key, status="applied"))
        log.mark_started(plan.actions[1].idempotency_key, attempt=1)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -9, done.stderr
    engine = make_engine(db_url)
    log = SqlActionLog(engine)
    assert log.outcome(plan.actions[0].idempotency_key).status == "applied"
    assert [a.seq for a in log.unfinished(plan.plan_id)] == [1, 2]
    engine.dispose()


def test_unknown_plans_and_keys(engine: Engine) -> None:
    log = SqlActionLog(engine)
    with pytest.raises(NotFoundError, match="plan"):
        log.unfinished("nope")
    with pytest.raises(NotFoundError, match="action"):
        log.mark_started("nope:0", attempt=1)


def test_actions_added_to_a_stored_plan_are_recorded_and_recorded_ones_keep_their_state(engine: Engine) -> None:
    plan = make_plan()
    first = plan.actions[0]
    log = SqlActionLog(engine)
    log.record_plan(plan.model_copy(update={"actions": (first,)}))  # as the plan API stored it
    log.mark_started(first.idempotency_key, attempt=1)
    log.record_plan(plan)  # the executor's copy carries two more actions
    assert log.unfinished(plan.plan_id) == list(plan.actions)
    assert log.attempts(first.idempotency_key) == 1
