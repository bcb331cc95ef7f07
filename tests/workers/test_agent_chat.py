"""OpenAI chat completions and the model list on a real worker agent on loopback: the messages go through the
worker's chat template, the tokens are the dense reference's, streamed or not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.workers.agents import running_agent
from tests.workers.engines import dense_tokens
from workers.agent import chat_prompt
from workers.schemas import ChatMessage
from workers.tokenizer import ByteTokenizer

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[str, object]]:
    with running_agent("chat") as served:
        yield served


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "a", "messages": MESSAGES, "temperature": 0,
                                                          "ignore_eos": True, **body}, timeout=120)


def expected(messages: list[dict], n: int) -> list[int]:
    prompt = chat_prompt([ChatMessage.model_validate(m) for m in messages])
    return dense_tokens("a", tuple(ByteTokenizer().encode(prompt)), n)


def reference_logprobs(messages: list[dict], tokens: list[int]) -> list[float]:
    """Each token's log-probability under the dense reference model, recomputing the whole sequence per token."""
    import torch

    from tests.workers.engines import _dense
    from workers.reference import dense_logits

    seq = ByteTokenizer().encode(chat_prompt([ChatMessage.model_validate(m) for m in messages]))
    out = []
    with torch.inference_mode():
        for token in tokens:
            out.append(float(torch.log_softmax(dense_logits(_dense("a"), seq)[-1].float(), -1)[token]))
            seq.append(token)
    return out


def test_logprobs_are_the_models_own_streamed_or_not(agent) -> None:
    url, _ = agent
    tokens = expected(MESSAGES, 6)
    reference = reference_logprobs(MESSAGES, tokens)
    body = chat(url, max_tokens=6, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [c["logprob"] for c in content] == pytest.approx(reference, abs=1e-4)
    assert all(c["bytes"] == [t] and len(c["top_logprobs"]) == 3 for c, t in zip(content, tokens, strict=True))
    assert all(c["top_logprobs"][0]["logprob"] == pytest.approx(c["logprob"]) for c in content)  # greedy: the top
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120, json={
            "model": "a", "messages": MESSAGES, "temperature": 0, "ignore_eos": True, "max_tokens": 6, "stream": True,
            "logprobs": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    streamed = [c["logprob"] for ch in chunks[1:] for c in ch["choices"][0]["logprobs"]["content"]]
    assert streamed == pytest.approx(reference, abs=1e-4)
    # Completions: OpenAI's parallel lists, text offsets included.
    prompt = chat_prompt([ChatMessage.model_validate(m) for m in MESSAGES])
    done = httpx.post(f"{url}/v1/completions", json={"model": "a", "prompt": prompt, "max_tokens": 6, "temperature": 0,
                                                     "ignore_eos": True, "logprobs": 2}, timeout=120).json()
    lps = done["choices"][0]["logprobs"]
    assert lps["token_logprobs"] == pytest.approx(reference, abs=1e-4)
    assert lps["text_offset"][0] == 0 and all(len(top) == 2 for top in lps["top_logprobs"])


def test_the_template_is_one_line_per_message_then_the_assistant_cue() -> None:
    assert chat_prompt([ChatMessage.model_validate(m) for m in MESSAGES]) == (
        "<|system|>\nYou are terse.\n<|user|>\nSay something.\n<|assistant|>\n")


def test_a_chat_completion_continues_the_templated_prompt(agent) -> None:
    url, _ = agent
    response = chat(url, max_tokens=12)
    assert response.status_code == 200, response.text
    body = response.json()
    tokens = expected(MESSAGES, 12)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": ByteTokenizer().decode(tokens)}
    assert choice["token_ids"] == tokens and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12
    # Content as a list of text parts is the same prompt; max_completion_tokens is max_tokens' newer name.
    parts = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": "Say "},
                                                       {"type": "text", "text": "something."}]}]
    again = chat(url, messages=parts, max_completion_tokens=12).json()
    assert again["choices"][0]["token_ids"] == tokens


def test_a_streamed_chat_names_the_role_first_then_sends_deltas(agent) -> None:
    url, _ = agent
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120, json={
            "model": "a", "messages": MESSAGES, "temperature": 0, "ignore_eos": True, "max_tokens": 10,
            "stream": True}) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = expected(MESSAGES, 10)
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == tokens
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks[1:])
    assert text == ByteTokenizer().decode(tokens)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 10
    assert all(c["usage"] is None for c in chunks[:-1])


def test_the_model_list_names_every_model_with_its_residency(agent) -> None:
    url, _ = agent
    listed = httpx.get(f"{url}/v1/models").json()
    assert listed["object"] == "list"
    cards = {m["id"]: m for m in listed["data"]}
    assert set(cards) == {"a", "b"} and all(m["object"] == "model" and m["owned_by"] == "fleetwise"
                                            for m in cards.values())
    assert cards["a"]["residency"] == "active" and cards["a"]["max_context_tokens"] > 0


@pytest.mark.parametrize(("change", "status", "param", "text"), [
    ({"messages": []}, 422, "messages", "at least 1 item"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 422, "messages.0.role", "system"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 422,
     "messages.0.content", None),
    ({"max_tokens": 5, "max_completion_tokens": 5}, 422, "body", "max_tokens or max_completion_tokens, not both"),
    ({"top_logprobs": 2}, 422, "body", "top_logprobs only with logprobs: true"),
    ({"logprobs": True, "top_logprobs": 21}, 422, "top_logprobs", "less than or equal to 20"),
    ({"tools": []}, 422, "tools", "Extra inputs are not permitted"),
    ({"model": "zz"}, 404, "model", "a model this worker serves"),
    ({"max_tokens": 100_000}, 400, "prompt_tokens", "within the context"),
])
def test_bad_chat_bodies_are_refused_naming_the_field(agent, change: dict, status: int, param: str,
                                                      text: str | None) -> None:
    url, _ = agent
    response = chat(url, **change)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param) and error["type"] == "invalid_request_error"
    assert text is None or text in error["message"], error["message"]


def test_without_a_limit_a_chat_generates_up_to_the_models_context(agent) -> None:
    """vLLM's rule: max_tokens left out is what the context (here also the KV share) leaves after the prompt."""
    url, _ = agent
    context = {m["id"]: m["max_context_tokens"] for m in httpx.get(f"{url}/v1/models").json()["data"]}["a"]
    usage = chat(url, messages=[{"role": "user", "content": "hi"}]).json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == context


def test_the_official_openai_client_lists_chats_streams_and_completes(agent) -> None:
    """What users run: the `openai` package against the worker's /v1, errors included."""
    import openai

    url, _ = agent
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["a", "b"]
    said = client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert said.choices[0].message.content == ByteTokenizer().decode(expected(MESSAGES, 8))
    assert said.usage is not None and said.usage.completion_tokens == 8
    streamed = client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
                                              stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == said.choices[0].message.content
    completed = client.completions.create(model="a", prompt="hi", max_tokens=5, temperature=0, presence_penalty=0,
                                          frequency_penalty=0, extra_body={"ignore_eos": True})
    assert completed.choices[0].finish_reason == "length" and completed.usage.completion_tokens == 5
    scored = client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
                                            top_logprobs=2, extra_body={"ignore_eos": True})
    assert scored.choices[0].logprobs is not None
    assert [t.logprob for t in scored.choices[0].logprobs.content] == pytest.approx(
        reference_logprobs(MESSAGES, expected(MESSAGES, 4)), abs=1e-4)
    with pytest.raises(openai.UnprocessableEntityError, match="top_logprobs only with logprobs: true"):
        client.chat.completions.create(model="a", messages=MESSAGES, top_logprobs=2)
    with pytest.raises(openai.NotFoundError, match="a model this worker serves"):
        client.chat.completions.create(model="zz", messages=MESSAGES)
