"""Workers that stop answering: real HTTP agent processes paused with SIGSTOP (connections are accepted, nothing
is answered), so every timeout here is a real socket read that never completes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from core.actions import ActivateModel
from core.errors import NotFoundError
from executors.attempt import RetryPolicy
from executors.backends import http_workers
from executors.executor import PlanExecutor
from executors.memory_log import InMemoryActionLog
from executors.routing import RoutingTable
from executors.runner import RunnerConfig
from tests.executors.http_agent import AgentProcess, HttpTestWorkerClient, journal_keys, start_agents
from tests.executors.plans import make_plan, replica

CHAT0 = replica("chat@h100/0", "chat", ("h100/0",))
CHAT1 = replica("chat@h100/1", "chat", ("h100/1",))
CODE1 = replica("code@h100/1", "code", ("h100/1",))


def _executor(urls: dict[str, str], retry: RetryPolicy, status_timeout_s: float = 5.0
              ) -> tuple[PlanExecutor, InMemoryActionLog]:
    workers = http_workers(urls, lambda worker_id, url: HttpTestWorkerClient(url, worker_id), RoutingTable(),
                           status_timeout_s=status_timeout_s)
    log = InMemoryActionLog()
    return PlanExecutor(workers, log, config=RunnerConfig(retry=retry)), log


def _when(condition, then, timeout_s: float = 20.0) -> threading.Thread:
    """Run `then()` in a thread as soon as `condition()` holds."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if condition():
                    break
            except NotFoundError:
                pass
            time.sleep(0.01)
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def agents(tmp_path: Path):
    started: list[AgentProcess] = []

    def start(*worker_ids: str) -> list[AgentProcess]:
        new = start_agents(*[("--worker-id", w, "--journal", str(tmp_path / "journal")) for w in worker_ids])
        started.extend(new)
        return new

    yield start
    for agent in started:
        agent.kill()


def test_a_paused_worker_times_out_and_the_retry_after_it_recovers_applies_once(agents, tmp_path: Path) -> None:
    (agent,) = agents("h100/0")
    # 2 s per attempt: the resumed agent must answer the second within it, on a machine busy with other tests.
    executor, log = _executor({"h100/0": agent.url}, RetryPolicy(max_attempts=3, load_timeout_floor_s=2.0,
                                                                 backoff_initial_s=0.05, backoff_jitter_s=0.0))
    observed = [executor.workers.clients["h100/0"].status()]
    plan = make_plan((CHAT0,), (("h100/0", ActivateModel(model="chat", replica_id="chat@h100/0",
                                                         gpu_ids=("h100/0",), kv_limit_gib=20.0), ()),))
    key = f"{plan.plan_id}:0"
    agent.pause()
    resumer = _when(lambda: log.attempts(key) >= 2, agent.resume)
    report = executor.execute(plan, observed=observed, routing={})
    resumer.join()
    record = report.record(0)
    assert (record.state, record.attempts) == ("applied", 2), record.message
    assert log.history(key) == ["started:1", "started:2", "outcome:applied"]
    # The first attempt was delivered too once the agent resumed; the worker applied the key once.
    assert journal_keys(tmp_path / "journal") == [key]
    assert report.outcome == "applied"


def test_an_unresponsive_worker_fails_after_the_timeout_and_the_next_cycle_plans_around_it(agents) -> None:
    good, stuck = agents("h100/0", "h100/1")
    urls = {"h100/0": good.url, "h100/1": stuck.url}
    # 2 s per attempt: the good agent must load its model within it on a machine busy with other tests (at 0.5 s
    # it once needed a second attempt); the paused one times out either way.
    retry = RetryPolicy(max_attempts=2, timeout_floor_s=2.0, load_timeout_floor_s=2.0, backoff_initial_s=0.05,
                        backoff_jitter_s=0.0)
    executor, _ = _executor(urls, retry, status_timeout_s=0.5)
    observed = executor.workers.observe().statuses
    stuck.pause()
    plan = make_plan((CHAT0, CHAT1, CODE1))
    report = executor.execute(plan, observed=observed, routing={})

    states = {(r.kind, r.worker_id): (r.state, r.attempts) for r in report.actions}
    assert states[("activate_model", "h100/0")] == ("applied", 1)
    on_stuck = sorted((r.state, r.attempts) for r in report.actions if r.worker_id == "h100/1")
    assert on_stuck == [("unreachable", 0), ("unreachable", 2)]  # one timed out twice; the other was not sent
    assert states[("set_routing", None)] == ("skipped", 0)  # chat's routing waits for the replica on h100/1
    assert report.outcome == "partially_applied"
    assert report.unreachable_workers == ("h100/1",) and report.needs_replan
    assert any("did not answer 2 attempt(s)" in reason for reason in report.replan_reasons)
    assert {e.worker_id for e in report.events(0.0)} >= {"h100/1"}

    # Next cycle: observing marks the worker down, and a plan around it applies without waiting on it.
    observation = executor.workers.observe()
    assert set(observation.unhealthy) == {"h100/1"} and observation.errors["h100/1"] == "no status within 0.5 s"
    around = make_plan((CHAT0,), routing={"chat": {"chat@h100/0": 1.0}}, generation=2)
    report = executor.execute(around)
    assert report.outcome == "applied" and [r.kind for r in report.actions] == ["set_routing"]
    assert executor.workers.router.shares("chat") == {"chat@h100/0": 1.0}
