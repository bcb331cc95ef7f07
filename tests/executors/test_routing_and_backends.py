"""The router's table under the action contract, and the WorkerSet every backend builds."""

from __future__ import annotations

import pytest

from core.actions import Action, ResizeKV, SetRouting
from core.errors import InputError
from executors.backends import (
    DEFAULT_CONFIGS,
    BackendKind,
    WorkerSet,
    http_workers,
    local_workers,
    sim_workers,
)
from executors.routing import RoutingTable
from tests.executors.state_worker import StateMachineTestWorker, TestWorkerConfig


def _route(seq: int, revision: int, weights: dict[str, float], model: str = "chat") -> Action:
    return Action(plan_id="p", seq=seq, worker_id=None, revision=revision, reason="test",
                  args=SetRouting(model=model, weights=weights))


def test_routing_table_keeps_the_action_contract() -> None:
    table = RoutingTable({"chat": {"a": 1.0}})
    assert table.apply(_route(0, 3, {"a": 1, "b": 3})).status == "applied"
    assert table.shares("chat") == {"a": 0.25, "b": 0.75}
    assert table.apply(_route(0, 9, {"z": 1})).status == "applied"  # same key: the first answer, no change
    assert table.shares("chat") == {"a": 0.25, "b": 0.75}
    stale = table.apply(_route(1, 2, {"a": 1}))
    assert (stale.status, stale.worker_revision) == ("stale", 3)
    assert table.apply(_route(2, 3, {"a": 2, "b": 6})).status == "applied"  # same shares, same revision
    assert table.apply(_route(3, 3, {"a": 1})).status == "conflict"
    assert table.apply(_route(4, 1, {"x": 1}, model="code")).status == "applied"  # revisions are per model
    wrong = Action(plan_id="p", seq=5, worker_id=None, revision=4, reason="test",
                   args=ResizeKV(replica_id="a", kv_limit_gib=1))
    assert table.apply(wrong).status == "failed" and "only set_routing" in table.apply(wrong).message
    assert table.weights() == {"chat": {"a": 2, "b": 6}, "code": {"x": 1}}


def _worker(worker_id: str) -> StateMachineTestWorker:
    return StateMachineTestWorker(TestWorkerConfig(worker_id))


def test_worker_sets_from_each_backend_builder() -> None:
    sim = sim_workers([_worker("h100/0"), _worker("h100/1")], RoutingTable())
    assert sim.kind == BackendKind.SIM and DEFAULT_CONFIGS[BackendKind.SIM].max_concurrency == 1
    assert sim.default_config.max_concurrency == 1 and sorted(sim.clients) == ["h100/0", "h100/1"]
    local = local_workers(["h100/0"], _worker)
    assert local.target("h100/0") is local.clients["h100/0"] and local.target(None) is None
    assert local.routing() is None and sim.routing() == {}
    with pytest.raises(InputError, match="one client per GPU id"):
        sim_workers([_worker("h100/0"), _worker("h100/0")])
    with pytest.raises(InputError, match=r"worker factory: 'h100/1' is not allowed; a client for 'h100/1'"):
        local_workers(["h100/1"], lambda _: _worker("h100/0"))
    with pytest.raises(InputError, match=r"workers\['h100/0'\]\.url: 'h100:8000' is not allowed"):
        http_workers({"h100/0": "h100:8000"}, lambda w, u: _worker(w))


def test_observe_reports_workers_that_fail_or_answer_for_another_gpu() -> None:
    class Broken(StateMachineTestWorker):
        def status(self):
            raise ConnectionRefusedError("connection refused")

    sick = _worker("h100/2")
    workers = WorkerSet({"h100/0": _worker("h100/0"), "h100/1": Broken(TestWorkerConfig("h100/1")),
                         "h100/2": sick, "h100/3": _worker("h100/9")})
    healthy_status = sick.status
    sick.status = lambda: healthy_status().model_copy(update={"healthy": False})  # type: ignore[method-assign]
    observation = workers.observe()
    assert [s.worker_id for s in observation.statuses] == ["h100/0", "h100/2"]
    assert observation.errors == {"h100/1": "ConnectionRefusedError: connection refused",
                                  "h100/3": "the client for h100/3 reached worker h100/9"}
    assert sorted(observation.unhealthy) == ["h100/1", "h100/2", "h100/3"]
