"""The demo's replay (`controller.demo.traffic.Replay`) on simulated GPUs: a request waits at the router while its
model has no replica, as in the simulator, and is dropped only past the router's timeout; the live figures count a
plan's window from the replay's start to its last request's end."""

from __future__ import annotations

import pytest

from controller.demo import traffic
from controller.demo.run import replay_share
from core.requests import RequestTable
from core.state import NO_REPLICA_TIMEOUT
from executors import BackendKind, RoutingTable, WorkerSet
from tests.controller.test_sim_fleet import SteppedClock, activate_chat, two_gpu_sim


def test_the_demo_replay_holds_a_request_until_its_model_has_a_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traffic, "STATUS_REFRESH_S", 0.0)  # look the replicas up at every step of the test clock
    clock = SteppedClock()
    sim = two_gpu_sim(clock)
    clock.at = [(10.0, lambda: activate_chat(sim, "h100/1"))]  # the plan's replica comes 10 s in, loads for 4 s
    router = RoutingTable({"chat": {"chat@h100/1": 1.0}})
    workers = WorkerSet(sim.clients(), router, kind=BackendKind.LOCAL)
    table = RequestTable.from_columns(arrival_s=[1.0, 2.0], model_idx=[0, 0], slo_idx=[0, 0],
                                      prompt_tokens=[100, 100], output_tokens=[3, 3], model_names=("chat",),
                                      slo_names=("interactive",))
    replay = traffic.Replay(table, clock, workers, router, sim, lambda c, ttft, tpot: ttft <= 30.0)
    replay.run()  # returns once nothing waits at the router
    clock.sleep_until(60.0)
    replay.collect()
    assert replay.outcomes.completed == 2 and replay.outcomes.dropped == 0 and replay.outcomes.met_slo == 2
    assert clock.now() < 20.0 + 60.0  # the tail loop stopped once the replica took them


def test_the_demo_replay_drops_a_request_that_waited_past_the_router_timeout() -> None:
    clock = SteppedClock()
    sim = two_gpu_sim(clock)
    router = RoutingTable({})
    workers = WorkerSet(sim.clients(), router, kind=BackendKind.LOCAL)
    table = RequestTable.from_columns(arrival_s=[1.0], model_idx=[0], slo_idx=[0], prompt_tokens=[100],
                                      output_tokens=[3], model_names=("chat",), slo_names=("interactive",))
    replay = traffic.Replay(table, clock, workers, router, sim, lambda c, ttft, tpot: True)
    replay.run()
    rows = replay.outcomes.take()
    assert [r["drop_reason"] for r in rows] == [NO_REPLICA_TIMEOUT]
    assert clock.now() >= 1.0 + replay.router_timeout_s


def test_replay_share_counts_only_the_part_of_a_plan_window_inside_the_replay() -> None:
    assert replay_share(0.0, 100.0, 50.0) == pytest.approx(0.5)
    assert replay_share(60.0, 100.0, 50.0) == 1.0 and replay_share(0.0, 40.0, 50.0) == 0.0
    assert replay_share(0.0, 100.0, 50.0, 75.0) == pytest.approx(0.25)  # nor what comes after its last request
