"""SIGKILL the executor halfway through a plan, start it again: every action is applied exactly once.

Everything is real: the executor runs in its own process with the durable SQLite action log
(`db.action_log.SqlActionLog`); the workers and the router are HTTP agent processes that journal (fsynced) each
action the first time they apply it, so the test sees what was applied, and how often, across both executors.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.actions import ActivateModel
from executors.diff import diff
from executors.report import ExecutionReport
from tests.executors.http_agent import ROOT, HttpTestWorkerClient, journal_keys, received_keys, start_agents
from tests.executors.plans import make_plan, replica

pytest.importorskip("db.action_log", reason="needs db.action_log.SqlActionLog (the durable action log)")

from db import migrate
from db.action_log import SqlActionLog

GPUS = ("h100/0", "h100/1")


def _plan():
    """Eight replicas with queue orders and routing for two models: 4 planned activations, 4 activations, 8 queue
    orders and 2 routing changes the executor adds (18 actions, 9 per worker at 0.2 s each)."""
    replicas = tuple(replica(f"{m}{i}@{g}", m, (g,), kv_gib=4.0) for g in GPUS for m in ("chat", "code")
                     for i in range(2))
    planned = tuple((r.leader, ActivateModel(model=r.model, replica_id=r.replica_id, gpu_ids=r.gpu_ids,
                                             kv_limit_gib=4.0), ()) for r in replicas[::2])
    queues = {r.replica_id: (f"{r.model}|interactive|0",) for r in replicas}
    return make_plan(replicas, planned, queues=queues)


def _start_executor(tmp_path: Path, db_url: str, urls: dict[str, str], router_url: str) -> subprocess.Popen:
    args = ["--db", db_url, "--plan", str(tmp_path / "plan.json"), "--router", router_url,
            "--report", str(tmp_path / "report.json")]
    for worker_id, url in urls.items():
        args += ["--worker", f"{worker_id}={url}"]
    return subprocess.Popen([sys.executable, "-m", "tests.executors.executor_proc", *args], cwd=ROOT)


def _wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_an_executor_killed_halfway_resumes_and_applies_every_action_exactly_once(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'actions.db'}"
    migrate.upgrade(db_url)
    journal = tmp_path / "journal"
    agents = start_agents(*[("--worker-id", g, "--journal", str(journal), "--apply-delay-s", "0.2") for g in GPUS],
                          ("--router", "--journal", str(journal)))
    try:
        urls = {g: a.url for g, a in zip(GPUS, agents, strict=False)}
        plan = _plan()
        (tmp_path / "plan.json").write_text(plan.model_dump_json())
        observed = [HttpTestWorkerClient(url, g).status() for g, url in urls.items()]
        expected = {a.idempotency_key for a in diff(observed, plan, routing={}).actions}
        assert len(expected) == 18

        first = _start_executor(tmp_path, db_url, urls, agents[2].url)
        _wait_for(lambda: len(journal_keys(journal)) >= 10, timeout_s=60)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        applied_before = journal_keys(journal)
        assert len(applied_before) < len(expected)
        log = SqlActionLog.from_url(db_url)
        assert log.unfinished(plan.plan_id), "the kill should leave work unfinished"
        logged_before = {k for k in expected if log.outcome(k) is not None}

        second = _start_executor(tmp_path, db_url, urls, agents[2].url)
        assert second.wait(timeout=120) == 0
        received = collections.Counter(received_keys(*(a.url for a in agents)))
    finally:
        for agent in agents:
            agent.kill()

    applied = collections.Counter(journal_keys(journal))
    assert set(applied) == expected
    assert max(applied.values()) == 1, [k for k, n in applied.items() if n > 1]
    report = ExecutionReport.model_validate_json((tmp_path / "report.json").read_text())
    assert report.outcome == "applied" and report.resumed
    # The restarted executor sent nothing whose outcome was logged, and everything that was not applied yet.
    assert all(received[k] == 1 for k in logged_before)
    sent_again = {r.idempotency_key for r in report.actions if r.attempts > 0}
    assert sent_again.isdisjoint(logged_before) and sent_again >= expected - set(applied_before)
    assert SqlActionLog.from_url(db_url).unfinished(plan.plan_id) == []
