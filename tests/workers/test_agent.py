"""Acceptance: a real worker agent on loopback serves two tiny models from one KV pool over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from core.actions import Action, PreemptOffline, ResizeKV, ResumeOffline
from core.catalog import GIB
from core.requests import Request
from tests.workers.agents import action as agent_action
from tests.workers.agents import running_agent, wait_for
from tests.workers.engines import dense_tokens
from workers.client import HttpWorkerClient
from workers.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[str, HttpWorkerClient]]:
    with running_agent("accept") as served:
        yield served


def action(args, seq: int, revision: int = 1) -> Action:
    return agent_action(args, seq, revision, plan_id="accept")


def complete(url: str, **body) -> dict:
    response = httpx.post(f"{url}/v1/completions", json={"temperature": 0, "ignore_eos": True, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def expected(model: str, prompt: str, n: int) -> list[int]:
    return dense_tokens(model, tuple(ByteTokenizer().encode(prompt)), n)


def test_concurrent_completions_to_two_models_while_one_shrinks(agent) -> None:
    url, client = agent
    prompts = [("a", f"request {i} to the small model") for i in range(3)] + \
              [("b", f"request {i} to the larger one") for i in range(3)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(complete, url, model=m, prompt=p, max_tokens=60) for m, p in prompts]
        wait_for(lambda: any(r.model == "a" and r.num_running for r in client.status().replicas))
        # Two pages hold one request of model a at a time (64 tokens a page): the others wait or are preempted.
        page_gib = client.status().kv_page_bytes / GIB
        shrink = client.apply(action(ResizeKV(replica_id="a-0", kv_limit_gib=2 * page_gib), seq=10, revision=2))
        assert shrink.status in ("applied", "deferred"), shrink
        bodies = [f.result() for f in futures]
    for (model, prompt), body in zip(prompts, bodies, strict=True):
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length"
        assert choice["token_ids"] == expected(model, prompt, 60)
    a = next(r for r in client.status().replicas if r.model == "a")
    assert a.kv_limit_pages == 2 and not a.limit_pending and a.limit_revision == 2


def stream(url: str, **body) -> Iterator[dict]:
    with httpx.stream("POST", f"{url}/v1/completions", timeout=120,
                      json={"temperature": 0, "ignore_eos": True, "stream": True, **body}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[len("data: "):])


def test_an_offline_request_is_preempted_and_resumes_without_recomputation(agent) -> None:
    url, client = agent
    chunks = stream(url, model="b", prompt="offline batch work", max_tokens=400, slo_class="batch")
    first = next(chunks)
    request_id = int(first["id"].removeprefix("cmpl-"))
    paused = client.apply(action(PreemptOffline(replica_id="b-0", request_ids=(request_id,)), seq=20))
    assert paused.status == "applied" and paused.message.startswith("paused 1"), paused
    b = next(r for r in client.status().replicas if r.model == "b")
    assert b.num_offline_paused == 1 and b.num_running == 0
    assert client.apply(action(ResumeOffline(replica_id="b-0"), seq=21)).message.startswith("resumed 1")
    rest = list(chunks)
    last = rest[-1]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"]["num_preemptions"] == 1 and last["usage"]["num_recomputed_tokens"] == 0
    # Every chunk carries the tokens new in it (the text's delta), the last one too.
    assert [t for c in [first, *rest] for t in c["choices"][0]["token_ids"]] == expected("b", "offline batch work", 400)


def test_metrics_report_queues_pages_latencies_and_preemptions(agent) -> None:
    url, _client = agent
    complete(url, model="a", prompt="one more", max_tokens=4)
    text = httpx.get(f"{url}/metrics").text
    for needle in ('fleetwise_worker_requests_running{model="a"}', 'fleetwise_worker_kv_pages_used{model="b"}',
                   'fleetwise_worker_ttft_seconds_count{model="a"}', 'fleetwise_worker_tpot_seconds_bucket',
                   "fleetwise_worker_preemptions_total", 'fleetwise_worker_requests_waiting{model="b"}'):
        assert needle in text, needle
    count = next(line for line in text.splitlines() if line.startswith('fleetwise_worker_ttft_seconds_count{model="a"}'))
    assert float(count.split()[-1]) >= 1


def test_submit_over_http_and_bad_input_get_clear_answers(agent) -> None:
    url, client = agent
    assert client.submit(Request(7, 0.0, "a", "interactive", 12, 3)).status == "accepted"
    assert client.submit(Request(8, 0.0, "zz", "interactive", 12, 3)).status == "rejected"
    too_long = httpx.post(f"{url}/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 5000})
    assert too_long.status_code == 400 and too_long.json()["where"] == "prompt_tokens"
    unknown = httpx.post(f"{url}/v1/completions", json={"model": "zz", "prompt": "x"})
    assert unknown.status_code == 404 and "a, b" in unknown.json()["allowed"]
    kind = httpx.post(f"{url}/v1/worker/actions", json={"plan_id": "p", "seq": 0, "worker_id": "local/0",
                                                         "revision": 1, "reason": "r", "args": {"kind": "explode"}})
    assert kind.status_code == 422 and kind.json()["where"] == "args" and "resize_kv" in kind.json()["allowed"]
    negative = client.apply(action(ResizeKV.model_construct(kind="resize_kv", replica_id="a-0", kv_limit_gib=-1.0),
                                   seq=30, revision=3))
    assert negative.status == "failed" and "kv_limit_gib" in negative.message
    assert httpx.get(f"{url}/healthz").json()["worker_id"] == "local/0"


def test_stop_strings_end_a_completion_before_them_streamed_or_not(agent) -> None:
    url, _client = agent
    prompt = "stop strings"
    greedy = expected("a", prompt, 40)
    # The first pair of ASCII tokens after the third: the greedy output reaches it at position i.
    i = next(i for i in range(3, 39) if greedy[i] < 128 and greedy[i + 1] < 128)
    stop = bytes(greedy[i:i + 2]).decode()
    body = {"model": "a", "prompt": prompt, "max_tokens": 40, "stop": ["never", stop]}
    choice = complete(url, **body)["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["token_ids"] == greedy[:i] and choice["text"] == ByteTokenizer().decode(greedy[:i])
    chunks = list(stream(url, **body))
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == greedy[:i]
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == i + 2  # the stop string was generated, not sent
    by_ids = httpx.post(f"{url}/v1/completions", json={**body, "prompt": [256, 65]})
    assert by_ids.status_code == 400 and by_ids.json()["error"]["param"] == "stop"
    too_many = httpx.post(f"{url}/v1/completions", json={**body, "stop": list("abcde")})
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "stop"
    assert complete(url, **{**body, "stop": stop})["choices"][0] == choice  # one string as a list of one
