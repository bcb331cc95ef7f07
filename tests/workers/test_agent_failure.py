"""A worker whose engine loop dies (a kernel fault, a device error) must say so: `/healthz` answers 503 so that a
supervisor restarts it, requests in flight end with the error instead of waiting forever, and new ones are refused
with 503. The fault is injected by replacing the engine's step (no device here can fail for real)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from core.actions import Action, ActivateModel
from tests.workers.agents import wait_for
from tests.workers.engines import make_engine
from workers.agent import create_app, serve_in_thread
from workers.control import LocalWorkerClient


@pytest.mark.parametrize("streamed", [False, True])
def test_injected_engine_fault_fails_requests_and_health_instead_of_hanging(streamed: bool) -> None:
    engine = make_engine(activate=(), kv_pages=24)
    real_step, fault = engine.step, threading.Event()

    def step():
        if fault.is_set() and engine.has_work:
            raise RuntimeError("injected device fault")
        return real_step()

    engine.step = step
    local = LocalWorkerClient(engine)
    running = serve_in_thread(create_app(local))
    url = running.url
    try:
        activate = ActivateModel(model="a", replica_id="a-0", gpu_ids=("local/0",))
        assert local.apply(Action(plan_id="p", seq=0, worker_id="local/0", args=activate, revision=1,
                                  reason="test")).status == "applied"
        body = {"model": "a", "prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200

        # A request in flight when the fault comes ends with it (a 503, or a stream's last finish reason), not
        # after a client timeout.
        long = {**body, "max_tokens": 200, "stream": streamed}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/completions", json=long, timeout=30)
            wait_for(lambda: any(h.tokens for h in list(engine._handles.values())))
            fault.set()
            response = pending.result()
        if streamed:
            chunks = [json.loads(line[6:]) for line in response.text.splitlines()
                      if line.startswith("data: {")]
            assert chunks[-1]["choices"][0]["finish_reason"] == "error: RuntimeError: injected device fault"
        else:
            assert response.status_code == 503, response.text
            assert response.json()["message"] == "RuntimeError: injected device fault"
        # A new request, streamed or not, is refused at once.
        stream = httpx.post(f"{url}/v1/completions", json={**body, "stream": True}, timeout=5)
        assert stream.status_code == 503 and stream.json()["error"]["code"] == "engine_stopped"

        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 503 and "injected device fault" in health.json()["error"]
        assert not httpx.get(f"{url}/v1/worker/status").json()["healthy"]
        assert 'reason="error"' in httpx.get(f"{url}/metrics").text
    finally:
        running.stop()
        local.close()
