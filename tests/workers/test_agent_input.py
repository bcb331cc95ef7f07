"""Bad input to a real worker agent on loopback: a 4xx (or a `failed` action) naming the field, the value and what is
allowed — never a 500, a dead engine, KV held for a client that left, or nonsense silently applied. After each
probe the worker still serves a normal completion."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from core.actions import (
    Action,
    ActivateModel,
    DeactivateModel,
    PreemptOffline,
    ReconfigureParallelism,
    ResumeOffline,
    SwapInKV,
    SwapOutKV,
)
from tests.workers.agents import action as agent_action
from tests.workers.agents import running_agent, wait_for
from tests.workers.engines import dense_tokens, make_engine
from workers.agent import create_app, serve_in_thread
from workers.client import HttpWorkerClient
from workers.control import LocalWorkerClient
from workers.tokenizer import ByteTokenizer

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[str, HttpWorkerClient]]:
    with running_agent("input") as served:
        yield served


def action(args, seq: int, revision: int = 1) -> Action:
    return agent_action(args, seq, revision, plan_id="input")


def assert_serves(url: str) -> None:
    body = {"model": "a", "prompt": "still here", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["token_ids"] == dense_tokens("a", tuple(ByteTokenizer().encode("still here")), 3)


@pytest.mark.parametrize(("path", "raw", "where"), [
    ("/v1/completions", b'{"model": "a", "prompt": "x", "temperature": NaN}', "temperature"),
    ("/v1/completions", b'{"model": "a", "prompt": "x", "temperature": Infinity}', "temperature"),
    ("/v1/completions", b'{"model": "a", "prompt": "\\ud800"}', "prompt.text"),
    ("/v1/worker/actions", (b'{"plan_id": "p", "seq": 0, "worker_id": "local/0", "revision": 1, "reason": "r", '
                            b'"args": {"kind": "resize_kv", "replica_id": "a-0", "kv_limit_gib": NaN}}'),
     "args.resize_kv.kv_limit_gib"),
    ("/v1/worker/requests", (b'{"request_id": 1, "arrival_s": NaN, "model": "a", "slo_class": "interactive", '
                             b'"prompt_tokens": 4, "output_tokens": 2}'), "arrival_s"),
])
def test_values_json_cannot_carry_are_named_in_a_422(agent, path: str, raw: bytes, where: str) -> None:
    """Python's JSON parser reads NaN, Infinity and lone surrogates; echoing them back used to fail with a 500 (or,
    for arrival_s, they were accepted)."""
    url, _ = agent
    response = httpx.post(f"{url}{path}", content=raw, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["where"] == where and where in response.json()["message"]
    assert_serves(url)


@pytest.mark.parametrize(("raw", "headers", "where", "says"), [
    (b'{"model": "a", "prompt": ', JSON, "body", "not valid JSON"),
    (b'{"model": "a", "prompt": "x"}', {}, "body", "Content-Type: application/json"),
    (b'{"prompt": "x"}', JSON, "model", "model: is missing"),
    (b'{"model": "a", "prompt": []}', JSON, "prompt.token_ids", "at least 1 item"),
    (b'{"model": "a", "prompt": ["one", "two"]}', JSON, "prompt.token_ids.0", "'one' is not allowed"),
    (b'{"model": "a", "prompt": null}', JSON, "prompt", "text or a list of token ids"),
    (b'{"model": "a", "prompt": "x", "slo_class": ""}', JSON, "slo_class", "one of interactive, batch"),
])
def test_malformed_and_incomplete_bodies_name_the_field_and_the_problem(agent, raw: bytes, headers: dict,
                                                                        where: str, says: str) -> None:
    url, _ = agent
    response = httpx.post(f"{url}/v1/completions", content=raw, headers=headers)
    assert response.status_code in (400, 422), response.text
    assert response.json()["where"] == where and says in response.json()["message"], response.json()
    assert_serves(url)


def test_a_tiny_temperature_samples_near_greedy_and_the_engine_lives_on(agent) -> None:
    """softmax(logits / 1e-320) was NaN: the engine thread died and every later request hung."""
    url, client = agent
    body = {"model": "a", "prompt": "cold", "max_tokens": 4, "temperature": 1e-320, "ignore_eos": True}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["token_ids"] == dense_tokens("a", tuple(ByteTokenizer().encode("cold")), 4)
    assert client.status().healthy
    assert_serves(url)


def removed(url: str) -> float:
    found = re.search(r'fleetwise_worker_requests_finished_total\{model="a",reason="removed"\} (\S+)',
                      httpx.get(f"{url}/metrics").text)
    return float(found.group(1)) if found else 0.0


def assert_removed_and_freed(url: str, client: HttpWorkerClient, removed_before: float) -> None:
    """The request whose client left is counted as removed, no page is held, and the worker still serves."""
    wait_for(lambda: removed(url) > removed_before, 10, "the request was not removed when its client left")
    status = client.status()
    assert status.kv_pages_used == 0 and all(r.num_running == r.num_waiting == 0 for r in status.replicas)
    assert_serves(url)


def test_a_client_that_gives_up_on_a_plain_completion_frees_its_kv_pages(agent) -> None:
    """Not streamed: the client (a timeout, a cancelled call) closes its connection while the request generates."""
    url, client = agent
    before = removed(url)
    body = json.dumps({"model": "a", "prompt": "given up", "max_tokens": 900, "temperature": 0,
                       "ignore_eos": True}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        wait_for(lambda: any(r.model == "a" and r.num_running for r in client.status().replicas), 10,
                 "the request never ran")
    assert_removed_and_freed(url, client, before)


def test_a_client_that_leaves_mid_stream_frees_its_kv_pages_at_once(agent) -> None:
    """The request used to run on to max_tokens for no one, holding its pages."""
    url, client = agent
    before = removed(url)
    body = {"model": "a", "prompt": "abandoned", "max_tokens": 900, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
        chunks = (line for line in response.iter_lines() if line.startswith("data: "))
        next(chunks), next(chunks)  # two tokens, then the client hangs up
    assert_removed_and_freed(url, client, before)


@pytest.mark.parametrize(("raw", "status"), [("Infinity", 422), ("1e300", 200)])
def test_kv_limits_too_large_to_count_in_bytes_fail_naming_kv_limit_gib(agent, raw: str, status: int) -> None:
    """Infinity is refused by the action's schema (422); 1e300 GiB is finite but overflows to infinite bytes, and
    the worker fails the action."""
    url, _ = agent
    body = (b'{"plan_id": "input", "seq": %d, "worker_id": "local/0", "revision": 1, "reason": "r", "args": '
            b'{"kind": "resize_kv", "replica_id": "b-0", "kv_limit_gib": %s}}' % (100 + status, raw.encode()))
    response = httpx.post(f"{url}/v1/worker/actions", content=body, headers=JSON)
    assert response.status_code == status, response.text
    result = response.json()
    message = result["message"]
    assert "kv_limit_gib" in message and "finite" in message, result
    if status == 200:
        assert result["status"] == "failed"
    assert_serves(url)


FOREIGN = [
    (DeactivateModel(model="b", replica_id="a-0"), "model: 'b'"),
    (ReconfigureParallelism(replica_id="a-0", model="b", tp=1, gpu_ids=("local/0",)), "model: 'b'"),
    (ReconfigureParallelism(replica_id="zz", model="zz", tp=1, gpu_ids=("local/0",)), "replica_id: 'zz'"),
    (ActivateModel(model="a", replica_id="a-0", gpu_ids=("h100/3",)), "gpu_ids: ['h100/3']"),
    (SwapOutKV(replica_id="zz", request_ids=(1,)), "replica_id: 'zz'"),
    (SwapInKV(replica_id="zz", request_ids=(1,)), "replica_id: 'zz'"),
    (PreemptOffline(replica_id="zz"), "replica_id: 'zz'"),
    (ResumeOffline(replica_id="zz"), "replica_id: 'zz'"),
]


@pytest.mark.parametrize(("seq", "args", "where"), [(200 + i, *case) for i, case in enumerate(FOREIGN)])
def test_actions_for_another_model_gpu_or_replica_fail_instead_of_applying(agent, seq: int, args, where: str) -> None:
    url, client = agent
    result = client.apply(action(args, seq=seq, revision=2))
    assert result.status == "failed" and where in result.message, result
    assert all(r.residency == "active" for r in client.status().replicas)
    assert_serves(url)


def test_completion_errors_have_the_openai_shape_and_control_errors_the_projects(agent) -> None:
    """OpenAI clients read `error.message`; the project's fields stay beside it. The control API keeps the
    `InputError` body (`error` is its kind)."""
    url, _ = agent
    unknown = httpx.post(f"{url}/v1/completions", json={"model": "zz", "prompt": "x"})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "model_not_found"
    assert error["param"] == "model" and "zz" in error["message"] and unknown.json()["where"] == "model"
    invalid = httpx.post(f"{url}/v1/completions", json={"model": "a", "prompt": "x", "temperature": -1})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["param"] == "temperature" and invalid.json()["error"]["code"] == "invalid_input"
    control = httpx.post(f"{url}/v1/worker/actions", json={"plan_id": "p"})
    assert control.status_code == 422 and control.json()["error"] == "invalid_input"



def test_openai_clients_that_send_every_parameter_at_its_default_are_served(agent) -> None:
    """LangChain-style clients send penalties, best_of, logit_bias, logprobs and echo on every call, at their
    defaults: those are honoured; values the engine cannot honour are refused naming the field."""
    url, _ = agent
    body = {"model": "a", "prompt": "defaults", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    plain = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["token_ids"]
    defaults = {"presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "logit_bias": {}, "logprobs": None,
                "echo": False, "suffix": None, "n": 1, "top_p": 1}
    sent = httpx.post(f"{url}/v1/completions", json=body | defaults, timeout=60)
    assert sent.status_code == 200, sent.text
    assert sent.json()["choices"][0]["token_ids"] == plain
    forced = httpx.post(f"{url}/v1/completions", json=body | {"logit_bias": {"65": 100}}, timeout=60).json()
    assert forced["choices"][0]["token_ids"] == [65] * 8 and forced["choices"][0]["text"] == "A" * 8
    for field, value, status in (("logprobs", 21, 422), ("max_tokens", 0, 400), ("best_of", 2, 422),
                                 ("presence_penalty", 2.5, 422), ("logit_bias", {"x": 1}, 422),
                                 ("logit_bias", {"65": 101}, 422), ("logit_bias", {"9999": 1}, 400)):
        refused = httpx.post(f"{url}/v1/completions", json=body | {field: value}, timeout=60)
        assert refused.status_code == status and refused.json()["error"]["param"] == field, refused.text


def test_a_completion_larger_than_the_kv_share_is_a_400_with_the_limit_not_a_200_dropped() -> None:
    """OpenAI clients expect a request that can never be served to fail up front (as one past the context does),
    not a 200 whose `finish_reason` says it was dropped."""
    local = LocalWorkerClient(make_engine(activate=("a",), kv_pages=2))
    running = serve_in_thread(create_app(local))
    try:
        room = local.engine.scheduler.kv_capacity_tokens("a")
        prompt = len(ByteTokenizer().encode("x" * 10))
        body = {"model": "a", "prompt": "x" * 10, "max_tokens": room - prompt + 1, "temperature": 0}
        response = httpx.post(f"{running.url}/v1/completions", json=body, timeout=10)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "prompt_tokens" and error["code"] == "invalid_input"
        assert f"KV cache a holds on this worker now: {room} tokens" in error["message"]
        fits = httpx.post(f"{running.url}/v1/completions", json={**body, "max_tokens": room - prompt}, timeout=60)
        assert fits.status_code == 200, fits.text
        assert fits.json()["choices"][0]["finish_reason"] in {"length", "stop"}
    finally:
        running.stop()
        local.close()
