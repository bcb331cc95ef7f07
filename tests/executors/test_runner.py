"""Running plans on a fleet of test workers: order at run time, concurrency, retries, skips, resume, summary."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.actions import Action, ActivateModel, EvictRequests, ResizeKV, SetQueueOrder, SetRouting
from core.errors import InputError
from core.state import EventKind
from executors.attempt import RetryPolicy
from executors.report import ActionRecord, ExecutionReport
from executors.runner import RunnerConfig
from tests.executors.fleet import FAST_RETRY, TestFleet
from tests.executors.plans import make_plan, replica

CHAT0 = replica("chat@h100/0", "chat", ("h100/0",))
CHAT1 = replica("chat@h100/1", "chat", ("h100/1",))


def _only(report: ExecutionReport, kind: str) -> ActionRecord:
    (record,) = [r for r in report.actions if r.kind == kind]
    return record


def _activate(rid: str, model: str, worker: str, kv_gib: float = 20.0) -> ActivateModel:
    return ActivateModel(model=model, replica_id=rid, gpu_ids=(worker,), kv_limit_gib=kv_gib)


def test_moving_a_replica_keeps_serving_at_every_step() -> None:
    fleet = TestFleet(routing={"chat": {"chat@h100/0": 1.0}})
    fleet.workers["h100/0"].seed("chat@h100/0", "chat", kv_limit_gib=20.0)

    def make_before_break(action: Action) -> None:
        active = fleet.active_replicas()
        routed = set(fleet.router.shares("chat"))
        assert routed <= active, f"traffic routed to inactive {routed - active} before {action.kind}"
        if action.kind == "deactivate_model":
            assert routed == {"chat@h100/1"} and "chat@h100/1" in active

    fleet.checks += [make_before_break, fleet.dependencies_recorded]
    report = fleet.executor.execute(make_plan((CHAT1,)))
    assert report.outcome == "applied" and not report.needs_replan
    assert sorted(r.kind for r in report.actions) == ["activate_model", "deactivate_model", "set_routing"]
    assert all(r.added_by_executor and r.attempts == 1 for r in report.actions)
    assert fleet.active_replicas() == {"chat@h100/1"} and fleet.router.shares("chat") == {"chat@h100/1": 1.0}
    assert fleet.log.unfinished(report.plan_id) == []
    assert fleet.log.history(report.actions[0].idempotency_key) == ["started:1", "outcome:applied"]


def test_independent_actions_run_in_parallel_but_one_at_a_time_per_worker() -> None:
    fleet = TestFleet(4, apply_delay_s=0.15, config=RunnerConfig(max_concurrency=3, retry=FAST_RETRY))
    replicas = tuple(replica(f"m{i}@h100/{i % 4}", "chat", (f"h100/{i % 4}",), kv_gib=1) for i in range(8))
    fleet.worker_set.clients["h100/0"].config.memory_total_gib = 200  # two chat replicas on a GPU fit
    for w in fleet.workers.values():
        w.config.memory_total_gib = 200
    report = fleet.executor.execute(make_plan(replicas), routing={})
    assert report.outcome == "applied", report.replan_reasons
    assert fleet.max_in_flight == 3  # bounded by max_concurrency, and more than one at once
    assert all(w.max_overlap == 1 for w in fleet.workers.values())


def test_one_by_one_mode_applies_in_schedule_order() -> None:
    fleet = TestFleet(3, config=RunnerConfig(max_concurrency=1, retry=FAST_RETRY))
    plan = make_plan(tuple(replica(f"chat@h100/{i}", "chat", (f"h100/{i}",)) for i in range(3)))
    schedule = fleet.executor.plan_schedule(plan, [w.status() for w in fleet.workers.values()], {})
    order: list[str] = []
    fleet.checks.append(lambda a: order.append(a.idempotency_key))
    fleet.executor.execute(plan, routing={})
    assert order == [a.idempotency_key for a in schedule.actions]
    assert fleet.max_in_flight == 1


def test_retriable_failures_are_retried_with_the_same_key_until_they_succeed() -> None:
    fleet = TestFleet(busy_attempts={"activate_model": 2})
    report = fleet.executor.execute(make_plan((CHAT0,)), routing={})
    act = _only(report, "activate_model")
    assert act.state == "applied" and act.attempts == 3
    assert fleet.workers["h100/0"].received == [act.idempotency_key] * 3
    assert fleet.log.history(act.idempotency_key) == ["started:1", "started:2", "started:3", "outcome:applied"]


def test_retries_give_up_and_dependents_are_skipped_with_the_reason() -> None:
    fleet = TestFleet(busy_attempts={"activate_model": 5})
    report = fleet.executor.execute(make_plan((CHAT0,)), routing={})
    act, route = _only(report, "activate_model"), _only(report, "set_routing")
    assert (act.state, act.attempts) == ("failed", 3) and "busy" in act.message
    assert route.state == "skipped" and route.attempts == 0
    assert f"depends on seq {act.seq}, which ended failed: busy" in route.message
    assert report.outcome == "failed" and report.needs_replan
    assert fleet.router.weights() == {}


def test_stale_and_conflict_answers_are_never_retried() -> None:
    fleet = TestFleet(routing={"chat": {"chat@h100/0": 1.0}})
    fleet.workers["h100/0"].seed("chat@h100/0", "chat", kv_limit_gib=20.0)
    newer = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=30),), generation=5)
    assert fleet.executor.execute(newer).outcome == "applied"
    older = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=40),), generation=4)
    report = fleet.executor.execute(older)
    assert [(r.state, r.attempts) for r in report.actions] == [("stale", 1)]
    assert report.outcome == "failed" and not report.needs_replan  # a newer plan already took over
    same_generation = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=50),), generation=5)
    report = fleet.executor.execute(same_generation)
    assert [(r.state, r.attempts) for r in report.actions] == [("conflict", 1)] and report.needs_replan


def test_bad_arguments_fail_once_and_the_plan_is_partially_applied() -> None:
    fleet = TestFleet()
    plan = make_plan((CHAT0, replica("nope@h100/1", "nope", ("h100/1",))))
    report = fleet.executor.execute(plan, routing={})
    states = {r.kind + ":" + (r.worker_id or "router"): (r.state, r.attempts) for r in report.actions}
    assert states["activate_model:h100/1"] == ("failed", 1)
    assert states["set_routing:router"] == ("skipped", 0)
    assert report.outcome == "partially_applied"
    assert any("unknown model 'nope'" in reason for reason in report.replan_reasons)
    events = report.events(time_s=12.0)
    assert {e.kind for e in events} == {EventKind.ACTION_FAILED} and len(events) == 2


def test_a_deferred_shrink_counts_as_in_place() -> None:
    fleet = TestFleet(routing={"chat": {"chat@h100/0": 1.0}})
    fleet.workers["h100/0"].seed("chat@h100/0", "chat", kv_limit_gib=20.0, kv_pages_used=5000)
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=2.0),),
                     (("h100/0", ResizeKV(replica_id="chat@h100/0", kv_limit_gib=2.0), ()),
                      ("h100/0", SetQueueOrder(replica_id="chat@h100/0", policy="edf"), (0,))))
    report = fleet.executor.execute(plan)
    assert [r.state for r in report.actions] == ["deferred", "applied"] and report.outcome == "applied"


def test_executing_a_plan_again_sends_nothing_already_logged() -> None:
    fleet = TestFleet()
    plan = make_plan((CHAT0,), ((None, SetRouting(model="chat", weights={"chat@h100/0": 1.0}), ()),))
    first = fleet.executor.execute(plan, routing={})
    received = list(fleet.workers["h100/0"].received)
    # The router is told nothing changed, so the diff wants the plan's routing action again: the log has it.
    again = fleet.executor.execute(plan, routing={})
    assert fleet.workers["h100/0"].received == received and fleet.router.weights() == {"chat": {"chat@h100/0": 1}}
    assert [(r.seq, r.state, r.attempts) for r in again.actions] == [(0, "applied", 0)]
    assert again.resumed and not first.resumed and again.outcome == "applied"


def test_a_restarted_execution_resends_only_what_has_no_logged_outcome() -> None:
    fleet = TestFleet(routing={"chat": {"chat@h100/0": 1.0}})
    fleet.workers["h100/0"].seed("chat@h100/0", "chat", kv_limit_gib=20.0)
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=4.0),), (
        ("h100/0", SetQueueOrder(replica_id="chat@h100/0", policy="edf"), ()),
        ("h100/0", EvictRequests(replica_id="chat@h100/0", request_ids=(7,)), (0,)),
        ("h100/0", ResizeKV(replica_id="chat@h100/0", kv_limit_gib=4.0), (1,)),
    ), generation=2)
    worker = fleet.workers["h100/0"]
    # An earlier executor finished seq 0, sent seq 1 (the worker applied it) and died before logging the answer.
    fleet.log.record_plan(plan)
    for action in plan.actions[:2]:
        fleet.log.mark_started(action.idempotency_key, attempt=1)
        assert worker.apply(action).status == "applied"
    fleet.log.record_outcome(plan.actions[0].idempotency_key, worker.apply(plan.actions[0]))
    report = fleet.executor.execute(plan)
    assert [(r.seq, r.state, r.attempts) for r in report.actions] == [(0, "applied", 0), (1, "applied", 1),
                                                                        (2, "applied", 1)]
    assert report.resumed and report.outcome == "applied"
    keys = [a.idempotency_key for a in plan.actions]
    assert worker.applied == keys and worker.received == [keys[0], keys[1], keys[0], keys[1], keys[2]]
    assert fleet.log.history(keys[1]) == ["started:1", "started:1", "outcome:applied"]


def test_unhealthy_or_unknown_workers_get_nothing_and_the_report_asks_for_a_replan() -> None:
    fleet = TestFleet(2)
    sick = fleet.workers["h100/1"].status().model_copy(update={"healthy": False})
    observed = [fleet.workers["h100/0"].status(), sick]
    plan = make_plan((CHAT0, CHAT1, replica("chat@h100/7", "chat", ("h100/7",))))
    report = fleet.executor.execute(plan, observed=observed, routing={})
    states = {r.worker_id: (r.state, r.message) for r in report.actions if r.kind == "activate_model"}
    assert states["h100/0"][0] == "applied"
    assert states["h100/1"] == ("unreachable", "not sent: worker h100/1 is down: it reported itself unhealthy")
    assert states["h100/7"] == ("unreachable", "not sent: no client for worker h100/7")
    assert fleet.workers["h100/1"].received == []
    assert report.unreachable_workers == ("h100/1", "h100/7") and report.needs_replan


def test_back_off_waits_on_the_given_clock() -> None:
    @dataclass
    class SteppedClock:
        t: float = 0.0

        def now(self) -> float:
            return self.t

        def sleep_until(self, t: float) -> None:
            self.t = max(self.t, t)

    from executors.executor import PlanExecutor

    fleet = TestFleet(busy_attempts={"activate_model": 2})
    clock = SteppedClock()
    retry = RetryPolicy(backoff_initial_s=10.0, backoff_max_s=100.0, backoff_jitter_s=0.0)
    executor = PlanExecutor(fleet.worker_set, fleet.log, config=RunnerConfig(retry=retry), clock=clock)
    report = executor.execute(make_plan((CHAT0,)), routing={})
    assert _only(report, "activate_model").attempts == 3 and clock.t == 10.0 + 20.0  # exponential: 10 s, 20 s


def test_routing_actions_go_to_the_router_under_its_revision_contract() -> None:
    fleet = TestFleet(routing={"chat": {"chat@h100/0": 1.0}})
    fleet.workers["h100/0"].seed("chat@h100/0", "chat", kv_limit_gib=20.0)
    plan = make_plan((CHAT0, CHAT1), ((None, SetRouting(model="chat", weights={"chat@h100/0": 1, "chat@h100/1": 3}),
                                       ()), ("h100/1", _activate("chat@h100/1", "chat", "h100/1"), ())))
    report = fleet.executor.execute(plan)
    assert report.outcome == "applied"
    assert report.record(0).worker_id is None and fleet.router.shares("chat") == {"chat@h100/0": 0.25,
                                                                                     "chat@h100/1": 0.75}


def test_timeouts_come_from_expected_durations_with_a_floor_per_kind() -> None:
    policy = RetryPolicy(timeout_floor_s=5.0, load_timeout_floor_s=60.0, timeout_factor=3.0)
    plan = make_plan((CHAT0,), (("h100/0", _activate("chat@h100/0", "chat", "h100/0"), ()),
                                ("h100/0", ResizeKV(replica_id="chat@h100/0", kv_limit_gib=4), ())))
    activate, resize = plan.actions
    assert (policy.timeout_s(activate), policy.timeout_s(resize)) == (60.0, 5.0)
    slow = resize.model_copy(update={"expected_duration_s": 4.0})
    assert policy.timeout_s(slow) == 12.0
    with pytest.raises(InputError, match="retry.load_timeout_floor_s: 0 is not allowed"):
        RetryPolicy(load_timeout_floor_s=0)
    with pytest.raises(InputError, match="runner.max_concurrency"):
        RunnerConfig(max_concurrency=0)
