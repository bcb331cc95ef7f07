"""The ray backend on a local Ray cluster of CPU actors (started once for this module).

What runs in the actors, built inside each actor by the engine factory: the torch engine with tiny models
(`workers.control.LocalWorkerClient`, as a GPU worker would host) in the first test; the test worker
(`StateMachineTestWorker`, tests/executors/state_worker.py) where the test needs a worker seeded with a replica or
killed. The Ray transport, actor lifecycle and failure paths are real in every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from core.actions import Residency
from core.requests import Request
from executors.attempt import RetryPolicy
from executors.executor import PlanExecutor
from executors.memory_log import InMemoryActionLog
from executors.routing import RoutingTable
from executors.runner import RunnerConfig
from tests.executors.http_agent import ROOT
from tests.executors.plans import make_plan, replica
from tests.executors.state_worker import StateMachineTestWorker, TestWorkerConfig

ray = pytest.importorskip("ray", reason="the ray backend needs the 'ray' extra")

from executors.ray_backend import ray_workers

RETRY = RetryPolicy(max_attempts=2, timeout_floor_s=20.0, backoff_initial_s=0.05, backoff_jitter_s=0.0)


def tiny_engine(worker_id: str):  # a LocalWorkerClient; torch is imported inside the actor only
    """Engine factory run inside each actor: a CPU engine with the two tiny models; model a active on local/0."""
    from tests.workers.engines import make_engine
    from workers.control import LocalWorkerClient

    engine = make_engine(activate=(), worker_id=worker_id, pool="local")
    if worker_id == "local/0":
        engine.activate("a", replica_id="a@local/0")
    return LocalWorkerClient(engine)


def seeded_test_worker(worker_id: str) -> StateMachineTestWorker:
    """Engine factory run inside each actor: h100/0 starts with chat active."""
    worker = StateMachineTestWorker(TestWorkerConfig(worker_id))
    if worker_id == "h100/0":
        worker.seed("chat@h100/0", "chat", kv_limit_gib=20.0)
    return worker


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=f"fleetwise-test-{os.getpid()}",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def test_ray_actors_hosting_tiny_engines_move_a_model_make_before_break(ray_cluster: None) -> None:
    pytest.importorskip("torch")
    router = RoutingTable({"a": {"a@local/0": 1.0}})
    workers = ray_workers(["local/0", "local/1"], tiny_engine, router, namespace_prefix="move-")
    executor = PlanExecutor(workers, InMemoryActionLog(), config=RunnerConfig(retry=RETRY))
    kv_gib = 8 * 32 * 1024 / 1024**3  # 8 of the tiny engines' 32 KiB pages
    report = executor.execute(make_plan((replica("a@local/1", "a", ("local/1",), kv_gib=kv_gib),)))
    assert report.outcome == "applied", report.replan_reasons
    assert sorted(r.kind for r in report.actions) == ["activate_model", "deactivate_model", "set_routing"]
    statuses = {s.worker_id: s for s in workers.observe().statuses}
    assert [(r.replica_id, r.residency) for r in statuses["local/1"].replicas] == [("a@local/1", Residency.ACTIVE)]
    assert [r.residency for r in statuses["local/0"].replicas if r.model == "a"] == [Residency.HOST]
    assert router.shares("a") == {"a@local/1": 1.0}
    served = workers.clients["local/1"].submit(Request(1, 0.0, "a", "interactive", 12, 4))
    assert served.status == "accepted"


def test_a_dead_actor_is_reported_and_its_actions_fail_fast(ray_cluster: None) -> None:
    workers = ray_workers(["h100/0", "h100/1"], seeded_test_worker, RoutingTable(), namespace_prefix="dead-")
    observed = workers.observe().statuses  # waits for both actors to start (seconds on a busy machine)
    assert len(observed) == 2
    ray.kill(workers.clients["h100/1"].handle)
    executor = PlanExecutor(workers, InMemoryActionLog(), config=RunnerConfig(retry=RETRY))
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=30.0),
                      replica("code@h100/1", "code", ("h100/1",)),
                      replica("chat@h100/1", "chat", ("h100/1",))))
    report = executor.execute(plan, observed=observed, routing={})
    assert [(r.kind, r.state) for r in report.actions if r.worker_id == "h100/0"] == [("resize_kv", "applied")]
    on_dead = sorted((r.state, r.attempts) for r in report.actions if r.worker_id == "h100/1")
    assert on_dead == [("unreachable", 0), ("unreachable", 2)]
    assert "last: ActorDiedError: " in next(r.message for r in report.actions if r.attempts == 2)
    assert report.unreachable_workers == ("h100/1",) and report.outcome == "partially_applied"
    assert "h100/1" in workers.observe().unhealthy
