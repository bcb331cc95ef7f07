"""The ray backend on a local Ray cluster of CPU actors (started once for this module).

What runs in the actors: each hosts a StateMachineTestWorker (the test worker of tests/executors/state_worker.py)
built inside the actor by the engine factory — the Ray transport, actor lifecycle and failure paths are real; the
engine inside is the test worker, not the torch engine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from core.actions import Residency
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


def test_a_plan_runs_on_ray_actors_make_before_break(ray_cluster: None) -> None:
    router = RoutingTable({"chat": {"chat@h100/0": 1.0}})
    workers = ray_workers(["h100/0", "h100/1"], seeded_test_worker, router, namespace_prefix="move-")
    executor = PlanExecutor(workers, InMemoryActionLog(), config=RunnerConfig(retry=RETRY))
    report = executor.execute(make_plan((replica("chat@h100/1", "chat", ("h100/1",)),)))
    assert report.outcome == "applied", report.replan_reasons
    assert sorted(r.kind for r in report.actions) == ["activate_model", "deactivate_model", "set_routing"]
    statuses = {s.worker_id: s for s in workers.observe().statuses}
    assert [r.residency for r in statuses["h100/0"].replicas] == [Residency.HOST]
    assert [r.replica_id for r in statuses["h100/1"].replicas] == ["chat@h100/1"]
    assert router.shares("chat") == {"chat@h100/1": 1.0}


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
