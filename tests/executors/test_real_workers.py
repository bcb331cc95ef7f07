"""The executor on the fleet's real workers: simulated GPUs (`simulator.worker.SimulatedWorker`, the `sim`
backend), in-process torch engines with tiny models (`workers.control.LocalWorkerClient`, `local`), and the worker
agent over HTTP (`workers.client.HttpWorkerClient`, `http`) — in a thread, and as a `fleetwise worker` process
paused with SIGSTOP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from core.actions import Action, ApplyResult, Residency
from core.catalog import GIB
from core.protocols import WorkerClient
from core.requests import Request
from executors import InMemoryActionLog, PlanExecutor, RetryPolicy, RoutingTable, RunnerConfig
from executors.backends import http_workers, local_workers, sim_workers
from tests.executors.http_agent import ROOT
from tests.executors.plans import make_plan, replica

pytest.importorskip("torch")

from tests.workers.engines import make_engine
from workers.agent import create_app, serve_in_thread
from workers.client import HttpWorkerClient
from workers.control import LocalWorkerClient

KV_GIB = 8 * 32 * 1024 / GIB  # 8 of the test engines' 32 KiB pages
RETRY = RetryPolicy(max_attempts=2, timeout_floor_s=60.0, backoff_initial_s=0.05, backoff_jitter_s=0.0)


class Recorded:
    """Forwards to a real WorkerClient (or router) and appends `(kind, target)` of every action it passes on."""

    def __init__(self, inner: WorkerClient | RoutingTable, order: list[tuple[str, str]]):
        self.inner, self.order = inner, order

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def apply(self, action: Action) -> ApplyResult:
        self.order.append((action.kind, getattr(action.args, "replica_id", None) or action.args.model))
        return self.inner.apply(action)


def _moves(replica_of_a: str, gpu_of_a: str, generation: int):
    """Model a on `gpu_of_a`, model b on local/1."""
    return make_plan((replica(replica_of_a, "a", (gpu_of_a,), kv_gib=KV_GIB),
                      replica("b@local/1", "b", ("local/1",), kv_gib=KV_GIB)), generation=generation)


@pytest.fixture
def engines() -> Iterator[dict[str, LocalWorkerClient]]:
    clients = {w: LocalWorkerClient(make_engine(activate=(), worker_id=w, pool="local")) for w in ("local/0",
                                                                                                    "local/1")}
    yield clients
    for client in clients.values():
        client.close()


def test_local_engines_move_a_model_make_before_break_and_keep_serving(engines) -> None:
    order: list[tuple[str, str]] = []
    wrapped = {w: Recorded(c, order) for w, c in engines.items()}
    router = Recorded(RoutingTable(), order)
    executor = PlanExecutor(local_workers(wrapped, wrapped.__getitem__, router), InMemoryActionLog(),
                            config=RunnerConfig(retry=RETRY))
    first = executor.execute(_moves("a@local/0", "local/0", generation=1))
    assert first.outcome == "applied", first.replan_reasons
    assert engines["local/0"].submit(Request(1, 0.0, "a", "interactive", 12, 4)).status == "accepted"

    order.clear()
    second = executor.execute(_moves("a@local/1", "local/1", generation=2))
    assert second.outcome == "applied", second.replan_reasons
    assert order.index(("activate_model", "a@local/1")) < order.index(("set_routing", "a")) \
        < order.index(("deactivate_model", "a@local/0"))
    assert router.inner.shares("a") == {"a@local/1": 1.0}
    moved = {r.replica_id: r.residency for r in engines["local/1"].status().replicas}
    assert moved == {"a@local/1": Residency.ACTIVE, "b@local/1": Residency.ACTIVE}
    assert engines["local/1"].submit(Request(2, 0.0, "a", "interactive", 12, 4)).status == "accepted"


def test_worker_agents_over_http_apply_a_plan_once(engines) -> None:
    agents = {w: serve_in_thread(create_app(c)) for w, c in engines.items()}
    try:
        workers = http_workers({w: a.url for w, a in agents.items()}, lambda _, url: HttpWorkerClient(url),
                               RoutingTable())
        executor = PlanExecutor(workers, InMemoryActionLog(), config=RunnerConfig(retry=RETRY))
        plan = _moves("a@local/0", "local/0", generation=1)
        report = executor.execute(plan)
        assert report.outcome == "applied" and len(report.actions) == 4, report
        assert executor.execute(plan).actions == ()  # the fleet matches the plan now: nothing to do
        statuses = {s.worker_id: s for s in workers.observe().statuses}
        assert [(r.replica_id, r.kv_limit_pages) for r in statuses["local/0"].replicas] == [("a@local/0", 8)]
    finally:
        for agent in agents.values():
            agent.stop()


def test_a_fleetwise_worker_process_paused_with_sigstop_is_planned_around() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "worker", "--model", "a=Tiny-Llama-2L",
                             "--port", "0", "--worker-id", "local/1", "--kv-pages", "16", "--page-kib", "32",
                             "--no-activate", "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        url = _listening(proc)
        local = LocalWorkerClient(make_engine(activate=(), worker_id="local/0", pool="local"))
        workers = http_workers({"local/1": url}, lambda _, u: HttpWorkerClient(u, timeout_s=1.0), RoutingTable(),
                               status_timeout_s=1.0)
        workers.clients["local/0"] = local
        retry = RetryPolicy(max_attempts=2, timeout_floor_s=1.0, load_timeout_floor_s=1.0, backoff_initial_s=0.05,
                            backoff_jitter_s=0.0)
        executor = PlanExecutor(workers, InMemoryActionLog(), config=RunnerConfig(retry=retry))
        observed = workers.observe().statuses
        os.kill(proc.pid, signal.SIGSTOP)
        plan = make_plan((replica("a@local/0", "a", ("local/0",), kv_gib=KV_GIB),
                          replica("a@local/1", "a", ("local/1",), kv_gib=KV_GIB)))
        report = executor.execute(plan, observed=observed, routing={})
        states = {r.worker_id: (r.state, r.attempts) for r in report.actions}
        assert states["local/0"] == ("applied", 1) and states["local/1"] == ("unreachable", 2)
        assert report.unreachable_workers == ("local/1",) and report.needs_replan
        assert set(workers.observe().unhealthy) == {"local/1"}
        local.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _listening(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"LISTENING (http://\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError(f"fleetwise worker exited with {proc.wait()} before listening")


def test_simulated_workers_as_the_sim_backend() -> None:
    from simulator.fleet import FleetSimulation
    from simulator.planners import StaticPlanner
    from tests.factories import make_fleet, make_table

    # The simulation provides the GPUs and their event kernel; it is not run (its own planner is never called).
    sim = FleetSimulation(make_fleet(), make_table(1), StaticPlanner())
    executor = PlanExecutor(sim_workers(sim.workers.values(), RoutingTable()), InMemoryActionLog())
    assert executor.config.max_concurrency == 1
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=20.0),
                      replica("chat@h100/1", "chat", ("h100/1",), kv_gib=20.0)))
    report = executor.execute(plan)
    assert report.outcome == "applied", report.replan_reasons
    replicas = {r.replica_id: r for s in executor.workers.observe().statuses for r in s.replicas}
    assert sorted(replicas) == ["chat@h100/0", "chat@h100/1"]
    assert all(r.activating_until_s is not None for r in replicas.values())  # loading in simulated time
    assert executor.execute(plan).actions == ()  # activations in progress count as done


def test_an_activation_waits_for_the_drain_it_depends_on(engines) -> None:
    """A draining deactivation answers `deferred`; what depends on it starts only once the drain is done."""
    from core.actions import ActivateModel, DeactivateModel
    from executors.runner import ActionRunner
    from workers.engine import REPLAY

    worker = engines["local/0"]
    assert worker.apply(make_plan(actions=(("local/0", ActivateModel(model="a", replica_id="a@0",
                                                                     gpu_ids=("local/0",)), ()),),
                                  generation=1).actions[0]).status == "applied"
    # Long enough (424 of the replica's 512 KV tokens) to be running still when the deactivation arrives on a busy
    # machine: with 48 tokens CI once saw it finish first, and the deactivation had nothing to wait for.
    _, handle = worker.submit_with_handle(Request(7, 0.0, "a", "interactive", 24, 400), REPLAY)
    seen_at_activation: list[bool] = []

    class Watch(Recorded):
        def apply(self, action: Action) -> ApplyResult:
            if action.kind == "activate_model":
                seen_at_activation.append(handle.finish_reason is not None)
            return self.inner.apply(action)

    plan = make_plan(actions=(
        ("local/0", DeactivateModel(model="a", replica_id="a@0", to=Residency.HOST, drain=True), ()),
        ("local/0", ActivateModel(model="b", replica_id="b@0", gpu_ids=("local/0",)), (0,)),
    ), generation=2)
    log = InMemoryActionLog()
    log.record_plan(plan)
    runner = ActionRunner(lambda w: Watch(worker, []), log, RunnerConfig(retry=RETRY, settle_timeout_s=60))
    records = runner.run(plan.actions, prior={})
    assert [r.status for r in records] == ["deferred", "applied"]
    assert seen_at_activation == [True]
    assert worker.status().replicas and not any(r.draining for r in worker.status().replicas)
