"""The ActionLog contract the executor relies on, checked on the in-memory log and on the durable SQL log; drift on
plans stored before they run, with a log that adds the executor's actions and with one that cannot."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from core.actions import ActivateModel, ApplyResult, SetQueueOrder
from core.plan import Plan
from core.protocols import ActionLog
from executors.memory_log import InMemoryActionLog
from executors.report import ExecutionReport
from tests.executors.fleet import TestFleet
from tests.executors.plans import make_plan, replica

HAVE_DB = importlib.util.find_spec("db.action_log") is not None


def _sql_log(tmp_path: Path) -> Callable[[], ActionLog]:
    if not HAVE_DB:
        pytest.skip("db.action_log is not available")
    from db import migrate
    from db.action_log import SqlActionLog

    url = f"sqlite:///{tmp_path / 'log.db'}"
    migrate.upgrade(url)
    return lambda: SqlActionLog.from_url(url)  # each call: a fresh connection, as after a restart


@pytest.fixture(params=["memory", "sqlite"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ActionLog]:
    if request.param == "memory":
        log = InMemoryActionLog()
        return lambda: log
    return _sql_log(tmp_path)


def _plan():
    chat = replica("chat@h100/0", "chat", ("h100/0",))
    return make_plan((chat,), (
        ("h100/0", ActivateModel(model="chat", replica_id=chat.replica_id, gpu_ids=chat.gpu_ids), ()),
        ("h100/0", SetQueueOrder(replica_id=chat.replica_id, policy="edf"), (0,)),
    ))


def test_the_log_keeps_pending_started_and_finished_actions_apart(open_log: Callable[[], ActionLog]) -> None:
    plan = _plan()
    log = open_log()
    assert isinstance(log, ActionLog)
    log.record_plan(plan)
    log.record_plan(plan)  # idempotent
    first, second = (a.idempotency_key for a in plan.actions)
    assert open_log().unfinished(plan.plan_id) == list(plan.actions)
    log.mark_started(first, attempt=1)
    assert open_log().unfinished(plan.plan_id) == list(plan.actions)  # started but unanswered: re-sent
    assert open_log().outcome(first) is None
    answer = ApplyResult(idempotency_key=first, status="applied", message="ok", worker_revision=1, duration_s=0.5)
    log.record_outcome(first, answer)
    again = open_log()
    assert again.outcome(first) == answer
    assert again.unfinished(plan.plan_id) == [plan.actions[1]]
    log.record_outcome(second, ApplyResult(idempotency_key=second, status="failed", message="skipped: x"))
    assert open_log().unfinished(plan.plan_id) == [] and open_log().outcome(f"{plan.plan_id}:9") is None


def test_the_in_memory_log_adds_actions_recorded_later_for_a_stored_plan() -> None:
    plan = _plan()
    log = InMemoryActionLog()
    log.record_plan(plan.model_copy(update={"actions": plan.actions[1:]}))
    log.record_plan(plan)
    assert log.unfinished(plan.plan_id) == list(plan.actions)


def _stored_then_executed(log: ActionLog) -> tuple[ExecutionReport, TestFleet]:
    """The plan API stores the plan (one planned activation); the executor then adds drift for the rest."""
    fleet = TestFleet(2, log=log)
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",)), replica("chat@h100/1", "chat", ("h100/1",))),
                     (("h100/0", ActivateModel(model="chat", replica_id="chat@h100/0", gpu_ids=("h100/0",),
                                               kv_limit_gib=20.0), ()),))
    log.record_plan(plan)
    return fleet.executor.execute(plan, routing={}), fleet


def test_drift_on_a_plan_stored_before_execution_is_logged_and_applied(tmp_path: Path) -> None:
    log = _sql_log(tmp_path)()
    report, fleet = _stored_then_executed(log)
    assert report.outcome == "applied" and len(report.actions) == 3
    assert fleet.workers["h100/1"].applied  # the drift activation reached its worker
    assert sum(r.added_by_executor for r in report.actions) == 2
    assert all(log.outcome(r.idempotency_key) is not None for r in report.actions)


class FirstRecordOnlyLog(InMemoryActionLog):
    """A log that keeps a stored plan exactly as first recorded (the protocol allows it: idempotent per plan id)."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: set[str] = set()

    def record_plan(self, plan: Plan) -> None:
        if plan.plan_id not in self.stored:
            self.stored.add(plan.plan_id)
            super().record_plan(plan)


def test_drift_a_log_cannot_hold_is_not_sent_and_asks_for_a_replan() -> None:
    report, fleet = _stored_then_executed(FirstRecordOnlyLog())
    planned, *added = report.actions
    assert planned.state == "applied" and len(added) == 2
    assert all(r.state == "failed" and r.message.startswith("not logged: ") for r in added)
    assert fleet.workers["h100/1"].received == [] and report.needs_replan
    assert report.outcome == "partially_applied"
