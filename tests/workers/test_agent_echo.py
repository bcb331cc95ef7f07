"""`echo` on `/v1/completions`, as evaluation harnesses use it to score text (lm-evaluation-harness's loglikelihood:
the prompt echoed with `logprobs` and `max_tokens` 0 or 1), on a real agent on loopback: every prompt token's
log-probability is the dense reference's, whole or streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.workers.agents import running_agent
from tests.workers.engines import dense_tokens
from workers.tokenizer import ByteTokenizer

CONTEXT, CONTINUATION = "The capital of France is", " Paris"


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[str, object]]:
    with running_agent("echo") as served:
        yield served


def complete(url: str, **body) -> dict:
    response = httpx.post(f"{url}/v1/completions", json={"model": "a", "temperature": 0, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def reference(ids: list[int]) -> list[float]:
    """log P(ids[i] | ids[:i]) for i ≥ 1 under the dense reference model (no cache)."""
    import torch

    from tests.workers.engines import _dense
    from workers.reference import dense_logits

    with torch.inference_mode():
        lp = torch.log_softmax(dense_logits(_dense("a"), ids).float(), -1)
    return [float(lp[i - 1, t]) for i, t in enumerate(ids) if i]


def test_max_tokens_0_scores_the_prompt_and_generates_nothing(agent) -> None:
    url, _ = agent
    text = CONTEXT + CONTINUATION
    ids = ByteTokenizer().encode(text)
    body = complete(url, prompt=text, max_tokens=0, echo=True, logprobs=1)
    choice = body["choices"][0]
    assert choice["text"] == text and choice["token_ids"] == ids and choice["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == len(ids) and body["usage"]["completion_tokens"] == 0
    lps = choice["logprobs"]
    assert lps["tokens"][0] == "token_id:256" and lps["tokens"][1:4] == ["T", "h", "e"]  # BOS, then the bytes
    assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
    assert lps["token_logprobs"][1:] == pytest.approx(reference(ids), abs=1e-4)
    assert all(len(top) == 1 for top in lps["top_logprobs"][1:])
    assert lps["text_offset"][:3] == [0, 0, 1] and lps["text_offset"][-1] == len(text) - 1
    # The harness's sum: the continuation's log-likelihood, from the offset where it starts.
    start = lps["text_offset"].index(len(CONTEXT))
    assert sum(lps["token_logprobs"][start:]) == pytest.approx(sum(reference(ids)[start - 1:]), abs=1e-3)


def test_echo_puts_the_prompt_before_the_completion_whole_or_streamed(agent) -> None:
    url, _ = agent
    ids = ByteTokenizer().encode(CONTEXT)
    out = dense_tokens("a", tuple(ids), 5)
    body = complete(url, prompt=CONTEXT, max_tokens=5, echo=True, logprobs=2, ignore_eos=True)
    choice = body["choices"][0]
    assert choice["token_ids"] == ids + out
    assert choice["text"] == CONTEXT + ByteTokenizer().decode(out)
    lps = choice["logprobs"]
    assert len(lps["tokens"]) == len(ids) + 5 and lps["token_logprobs"][0] is None
    assert lps["token_logprobs"][1:] == pytest.approx(reference(ids + out), abs=1e-4)
    assert body["usage"]["completion_tokens"] == 5
    # Without logprobs: the same text, no log-probabilities.
    plain = complete(url, prompt=CONTEXT, max_tokens=5, echo=True, ignore_eos=True)["choices"][0]
    assert plain["text"] == choice["text"] and plain["logprobs"] is None
    # Streamed: the first chunk is the prompt with its log-probabilities, then the generated tokens.
    with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
            "model": "a", "prompt": CONTEXT, "max_tokens": 5, "temperature": 0, "ignore_eos": True, "echo": True,
            "logprobs": 0, "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    first = chunks[0]["choices"][0]
    assert first["text"] == CONTEXT and first["token_ids"] == ids and first["finish_reason"] is None
    streamed = [v for ch in chunks for v in ch["choices"][0]["logprobs"]["token_logprobs"]]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lps["token_logprobs"][1:], abs=1e-6)
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == choice["text"]
    offsets = [o for ch in chunks for o in ch["choices"][0]["logprobs"]["text_offset"]]
    # The prompt's bytes are ASCII; the random model's output may split UTF-8 characters, where a stream counts
    # characters as its decoder releases them.
    assert offsets[:len(ids) + 1] == lps["text_offset"][:len(ids) + 1] == [0, *range(len(CONTEXT) + 1)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 5


def test_a_streamed_score_of_a_token_id_prompt_sends_the_prompt_then_the_end(agent) -> None:
    url, _ = agent
    ids = [5, 17, 200, 3, 99, 42]
    with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
            "model": "a", "prompt": ids, "max_tokens": 0, "temperature": 0, "echo": True, "logprobs": 0,
            "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    assert len(chunks) == 2
    prompt, end = (c["choices"][0] for c in chunks)
    assert prompt["token_ids"] == ids and prompt["text"] == ""
    assert prompt["logprobs"]["tokens"] == [f"token_id:{t}" for t in ids]
    assert prompt["logprobs"]["token_logprobs"][1:] == pytest.approx(reference(ids), abs=1e-4)
    assert end["token_ids"] == [] and end["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 0


def test_max_tokens_0_without_echo_is_refused_naming_the_field(agent) -> None:
    url, _ = agent
    refused = httpx.post(f"{url}/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 0}, timeout=60)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "max_tokens" and "0 only with echo: true" in error["message"]


def test_the_official_openai_client_scores_a_prompt(agent) -> None:
    """The call an evaluation harness makes through the `openai` package: echo, logprobs, max_tokens 0."""
    import openai

    url, _ = agent
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    text = CONTEXT + CONTINUATION
    scored = client.completions.create(model="a", prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lps = scored.choices[0].logprobs
    assert scored.choices[0].text == text and lps is not None and lps.token_logprobs is not None
    assert lps.token_logprobs[0] is None
    assert lps.token_logprobs[1:] == pytest.approx(reference(ByteTokenizer().encode(text)), abs=1e-4)


def test_text_offsets_equal_the_length_of_each_prefix_decoded_alone() -> None:
    """The linear offsets agree with decoding every prefix, broken and special tokens included."""
    import random

    from workers.agent import _Call
    from workers.schemas import CompletionRequest

    call = _Call(CompletionRequest(model="a", prompt="x"), "x")
    rng = random.Random(0)
    for _ in range(500):
        tokens = [rng.choice([rng.randint(0, 255), rng.randint(0xC0, 0xF4), rng.randint(0x80, 0xBF), 256])
                  for _ in range(rng.randint(0, 24))]
        expected = [7 + len(ByteTokenizer().decode(tokens[:i])) for i in range(len(tokens))]
        assert call.text_offsets(tokens, 7) == expected, tokens
    assert _Call(CompletionRequest(model="a", prompt=[1, 2]), [1, 2]).text_offsets([1, 2], 3) == [3, 3]
