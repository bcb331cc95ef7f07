"""Shared set-up for tests of the worker agent: a real agent on loopback over a CPU engine with the two tiny
models active on one 24-page pool, and a poll-until helper."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from core.actions import Action, ActivateModel
from tests.workers.engines import make_engine
from workers.agent import create_app, serve_in_thread
from workers.client import HttpWorkerClient
from workers.control import LocalWorkerClient


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0, what: str = "timed out",
             poll_s: float = 0.005) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(poll_s)


def action(args, seq: int, revision: int = 1, plan_id: str = "test") -> Action:
    return Action(plan_id=plan_id, seq=seq, worker_id="local/0", args=args, revision=revision, reason="test")


@contextmanager
def running_agent(plan_id: str) -> Iterator[tuple[str, HttpWorkerClient]]:
    """(url, HTTP client) of an agent serving models a and b, activated by actions of plan `plan_id`."""
    local = LocalWorkerClient(make_engine(activate=(), kv_pages=24))
    running = serve_in_thread(create_app(local))
    client = HttpWorkerClient(running.url)
    try:
        for seq, model in enumerate("ab"):
            activate = ActivateModel(model=model, replica_id=f"{model}-0", gpu_ids=("local/0",))
            result = client.apply(action(activate, seq, plan_id=plan_id))
            assert result.status == "applied", result
        yield running.url, client
    finally:
        client.close()
        running.stop()
        local.close()
