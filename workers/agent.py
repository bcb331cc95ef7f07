"""The worker agent: a FastAPI app over one engine (`fleetwise worker` serves it with uvicorn).

- Control API (the WorkerClient protocol; `workers.client.HttpWorkerClient` speaks it):
  `GET /v1/worker/status`, `POST /v1/worker/actions` (an `Action` → `ApplyResult`), `POST /v1/worker/requests`
  (a `Request` → `SubmitResult`).
- `POST /v1/completions`: OpenAI-compatible completions, text (byte-level models) or token ids, streamed as
  server-sent events with `stream: true`; `POST /v1/chat/completions`: the same over chat messages, which the
  worker's chat template (`CHAT_TEMPLATE`) turns into one prompt; `GET /v1/models`: the models it serves.
- `GET /metrics` (Prometheus), `GET /healthz`.

Bad input answers 4xx with a JSON body naming the field, the value and what is allowed (`core.errors.InputError`
form); requests for a model the worker does not serve answer 404.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from core.actions import Action, ApplyResult, Residency
from core.errors import InputError, strict_json
from core.requests import Request
from core.status import SubmitResult, WorkerStatus
from workers.control import LocalWorkerClient
from workers.handles import RequestHandle, SamplingParams, StopHold, TokenLogprob
from workers.metrics import WorkerMetrics
from workers.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatMessageOut,
    Choice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    RequestIn,
    TokenLogprobOut,
    TopLogprob,
    Usage,
)
from workers.tokenizer import ByteTokenizer

COMPLETION_ID_BASE = 1 << 40  # completion request ids start here, clear of trace request ids
COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
OPENAI_BODIES: dict[str, type[BaseModel]] = {COMPLETIONS_PATH: CompletionRequest, CHAT_PATH: ChatCompletionRequest}


def create_app(client: LocalWorkerClient) -> FastAPI:
    """The agent's routes over `client` (whose engine loop must be running)."""
    app = FastAPI(title="fleetwise worker", description=__doc__)
    metrics = WorkerMetrics(client.engine)
    completions = _Completions(client)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        err = _as_input_error(exc.errors()[0], OPENAI_BODIES.get(request.url.path))
        return _error({**err.to_dict(), "errors": _jsonable_errors(exc)}, 422, openai=_is_openai(request))

    @app.exception_handler(InputError)
    async def _input_error(request: HttpRequest, exc: InputError) -> JSONResponse:
        return _error(exc.to_dict(), 400, openai=_is_openai(request))

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Liveness: 503 once the engine has stopped stepping (its loop died), so a supervisor restarts it."""
        failure = client.engine.failure
        if failure is not None:
            return JSONResponse({"status": "engine stopped", "worker_id": client.worker_id, "error": failure},
                                status_code=503)
        return JSONResponse({"status": "ok", "worker_id": client.worker_id})

    @app.get("/v1/worker/status", response_model=WorkerStatus)
    def status() -> WorkerStatus:
        return client.status()

    @app.post("/v1/worker/actions", response_model=ApplyResult)
    def apply(action: Action) -> ApplyResult:
        return client.apply(action)

    @app.post("/v1/worker/requests", response_model=SubmitResult)
    def submit(body: RequestIn) -> SubmitResult:
        return client.submit(body.to_request())

    @app.post(COMPLETIONS_PATH, response_model=CompletionResponse)
    async def complete(body: CompletionRequest, http: HttpRequest) -> Response:
        return await completions.serve(body, http)

    @app.post(CHAT_PATH, response_model=ChatCompletionResponse)
    async def chat(body: ChatCompletionRequest, http: HttpRequest) -> Response:
        return await completions.serve(body, http)

    @app.get(MODELS_PATH, response_model=ModelList)
    def models() -> ModelList:
        """The models this worker serves, in OpenAI's shape (residency and context as extensions)."""
        return completions.models()

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


CHAT_TEMPLATE = "<|{role}|>\n{content}\n"  # one per message, then ASSISTANT_CUE: what the model continues
ASSISTANT_CUE = "<|assistant|>\n"


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The messages as the one text prompt the model continues (`CHAT_TEMPLATE`, then `ASSISTANT_CUE`)."""
    return "".join(CHAT_TEMPLATE.format(role=m.role, content=m.text) for m in messages) + ASSISTANT_CUE


@dataclass(frozen=True)
class _Call:
    """One OpenAI call as the engine sees it: the body, its prompt (text or token ids) and whether it is chat."""

    body: CompletionRequest | ChatCompletionRequest
    prompt: str | list[int]

    @property
    def chat(self) -> bool:
        return isinstance(self.body, ChatCompletionRequest)

    @property
    def text(self) -> bool:
        return isinstance(self.prompt, str)

    @property
    def logprobs(self) -> int | None:
        """Alternatives per token to report (None: no log-probabilities)."""
        body = self.body
        if isinstance(body, ChatCompletionRequest):
            return (body.top_logprobs or 0) if body.logprobs else None
        return body.logprobs

    @property
    def echo(self) -> bool:
        """The answer starts with the prompt (completions' `echo`)."""
        return isinstance(self.body, CompletionRequest) and self.body.echo

    @property
    def scores_only(self) -> bool:
        """Echo with max_tokens 0: the prompt is scored and nothing generated. The engine's prefill pass samples one
        token anyway (it costs no pass of its own); it is not returned."""
        return self.echo and self.body.max_tokens == 0

    def finish_of(self, handle: RequestHandle) -> str | None:
        """The answer's finish reason: the handle's, and `length` for a prompt scored with max_tokens 0."""
        reason = handle.finish_reason
        return "length" if self.scores_only and reason in ("stop", "length") else reason

    def echoed(self, handle: RequestHandle) -> tuple[str, list[int], list[TokenLogprob | None]]:
        """What echo puts before the completion: the prompt's text, its token ids and their log-probabilities."""
        text = self.prompt if isinstance(self.prompt, str) else ""
        return text, list(handle.prompt_token_ids), list(handle.prompt_logprobs)

    def is_byte(self, token: int) -> bool:
        """Whether `token` is a byte of the answer's text (a text prompt's byte-level token, not a special one)."""
        return self.text and 0 <= token < 256

    def token_text(self, token: int) -> str:
        """A token as the logprobs lists name it: its character for an ASCII byte, OpenAI's `bytes:\\xNN` for a
        byte that is part of a longer UTF-8 character (so distinct tokens never share a name), else vLLM's
        `token_id:<id>` (special tokens, token-id prompts)."""
        if not self.is_byte(token):
            return f"token_id:{token}"
        return chr(token) if token < 128 else f"bytes:\\x{token:02x}"

    def token_bytes(self, token: int) -> list[int] | None:
        """A token's UTF-8 bytes (a byte-level token is one byte); None where the worker has no text for it."""
        return [token] if self.is_byte(token) else None

    def logprobs_of(self, tokens: list[int], logprobs: list[TokenLogprob | None],
                    offset: int = 0) -> CompletionLogprobs | ChatLogprobs | None:
        """The endpoint's form of `logprobs` (one per token of `tokens`; None for an echoed prompt's first token);
        `offset`: characters already sent."""
        if self.logprobs is None:
            return None
        if self.chat:
            return ChatLogprobs(content=[TokenLogprobOut(
                token=self.token_text(lp.token), logprob=lp.logprob, bytes=self.token_bytes(lp.token),
                top_logprobs=[TopLogprob(token=self.token_text(t), logprob=v, bytes=self.token_bytes(t))
                              for t, v in lp.top])
                for lp in logprobs])
        return CompletionLogprobs(
            tokens=[self.token_text(t) for t in tokens],
            token_logprobs=[lp.logprob if lp else None for lp in logprobs],
            top_logprobs=[{self.token_text(t): v for t, v in lp.top} if lp else None for lp in logprobs]
            if self.logprobs else None,
            text_offset=self.text_offsets(tokens, offset))

    def text_offsets(self, tokens: list[int], offset: int = 0) -> list[int]:
        """Where each token starts in the text: `offset` + the length of the text of the tokens before it (as decoded
        alone, a character the cut splits counting as one). Linear: an incremental decoder and a copy of its state,
        flushed, instead of decoding every prefix (an echoed 16k-token prompt took seconds)."""
        if not self.text:
            return [offset] * len(tokens)
        decoder, tail = (codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(2))
        out, chars = [], offset
        for token in tokens:
            pending = decoder.getstate()
            if pending[0]:
                tail.setstate(pending)
                out.append(chars + len(tail.decode(b"", final=True)))
            else:
                out.append(chars)
            if self.is_byte(token):
                chars += len(decoder.decode(bytes((token,))))
        return out


class _Completions:
    """`/v1/completions` and `/v1/chat/completions`: turns the OpenAI body into a request, waits on (or streams)
    its handle, and answers in the endpoint's shape."""

    def __init__(self, client: LocalWorkerClient) -> None:
        self.client = client
        self.engine = client.engine
        self._ids = itertools.count(COMPLETION_ID_BASE)
        self._ids_lock = threading.Lock()
        self.created = int(time.time())  # the models' `created`: when this agent started serving them

    def models(self) -> ModelList:
        store, created = self.engine.store, self.created
        return ModelList(data=[ModelCard(id=name, created=created, residency=store.residency(name).value,
                                         max_context_tokens=store.source(name).arch.max_context_tokens)
                               for name in store.names])

    async def serve(self, body: CompletionRequest | ChatCompletionRequest, http: HttpRequest | None = None) -> Response:
        if not self.engine.store.knows(body.model):
            err = InputError("model", body.model, f"a model this worker serves: {', '.join(self.engine.store.names)}")
            return _error({**err.to_dict(), "error": "model_not_found"}, 404, openai=True)
        call = _Call(body, chat_prompt(body.messages) if isinstance(body, ChatCompletionRequest) else body.prompt)
        if body.max_tokens == 0 and not call.echo:
            raise InputError("max_tokens", 0, "1 or more; 0 only with echo: true (the prompt is scored, nothing is "
                             "generated)")
        request = self._request(call)
        self.engine.validate(request)  # raises InputError → 400 with field, value, allowed
        params = SamplingParams(temperature=body.temperature, seed=body.seed or 0, ignore_eos=body.ignore_eos,
                                stop=_stop_sequences(call), presence_penalty=body.presence_penalty,
                                frequency_penalty=body.frequency_penalty,
                                logit_bias=_logit_bias(body, self.engine.store.source(body.model).arch.vocab_size),
                                logprobs=call.logprobs, prompt_logprobs=call.logprobs if call.echo else None)
        result, handle = self.client.submit_with_handle(request, params)
        if handle is None:
            stopped = self.engine.failure is not None
            return _error({"error": "engine_stopped" if stopped else "rejected", "message": result.message},
                          503 if stopped else 400, openai=True)
        events = _events(handle)
        if body.stream:
            return StreamingResponse(self._stream(call, handle, events), media_type="text/event-stream")
        watcher = asyncio.create_task(self._abort_when_gone(http, handle)) if http is not None else None
        try:
            async for _ in events:
                pass
        finally:
            if watcher is not None:
                watcher.cancel()
        if handle.finish_reason and handle.finish_reason.startswith("error:"):
            return _error({"error": "engine_stopped", "message": handle.finish_reason.removeprefix("error: "),
                           "tokens_generated": len(handle.tokens)}, 503, openai=True)
        tokens = [] if call.scores_only else (
            params.without_stop(handle.tokens) if handle.finish_reason == "stop" else handle.tokens)
        text = ByteTokenizer().decode(tokens) if call.text else ""
        return JSONResponse(self._answer(call, handle, text, tokens, call.finish_of(handle)).model_dump())

    async def _abort_when_gone(self, http: HttpRequest, handle: RequestHandle, poll_s: float = 0.05) -> None:
        """A client that gives up on a non-streamed completion (a timeout, a cancelled call) must not leave the
        request generating for no one and holding its KV pages: end it once the connection is gone."""
        while not handle.done:
            if await http.is_disconnected():
                self.engine.abort(handle.request_id, "client disconnected")
                return
            await asyncio.sleep(poll_s)

    def _request(self, call: _Call) -> Request:
        body = call.body
        with self._ids_lock:
            request_id = next(self._ids)
        slo = body.slo_class if body.slo_class is not None else next(
            c.name for c in self.engine.slo_classes.values() if c.online)
        text, ids = (call.prompt, None) if isinstance(call.prompt, str) else (None, tuple(call.prompt))
        prompt_len = len(ids) if ids is not None else len(ByteTokenizer().encode(text or ""))
        return Request(request_id=request_id, arrival_s=time.time(), model=body.model, slo_class=slo,
                       prompt_tokens=prompt_len, output_tokens=self._max_tokens(call, prompt_len),
                       prompt_text=text, prompt_token_ids=ids)

    def _max_tokens(self, call: _Call, prompt_len: int) -> int:
        """The body's limit; left out, 16 for completions (OpenAI's default) and, for chat, as many as fit: the
        model's context and, once it is active, its KV share on this worker (so a chat never fails for a limit
        the client did not set)."""
        body = call.body
        given = body.max_tokens if not isinstance(body, ChatCompletionRequest) else (
            body.max_tokens or body.max_completion_tokens)
        if given is not None:
            return max(given, 1)  # 0 (echo only): the prefill's one token, not returned
        if not call.chat:
            return 16
        room = self.engine.store.source(body.model).arch.max_context_tokens - prompt_len
        if self.engine.scheduler.has_model(body.model) and self.engine.store.residency(body.model) is Residency.ACTIVE:
            room = min(room, self.engine.scheduler.kv_capacity_tokens(body.model) - prompt_len)
        return max(room, 1)  # a prompt with no room left is refused by validate, naming it

    async def _stream(self, call: _Call, handle: RequestHandle,
                      events: AsyncIterator[int | None]) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        hold = StopHold(handle.params)  # the stop sequence is never sent (as in the non-streamed text)

        def text(tokens: list[int], *, final: bool = False) -> str:
            return decoder.decode(bytes(t for t in tokens if call.is_byte(t)), final=final)

        sent = chars = 0  # tokens and characters sent so far (the logprobs of a chunk are those of its tokens)

        def chunk(tokens: list[int], piece: str, finish: str | None, scored: list[TokenLogprob | None] | None = None,
                  ) -> BaseModel:
            nonlocal sent, chars
            if scored is None:  # generated tokens: their entries follow those already sent
                scored, sent = handle.logprobs[sent:sent + len(tokens)], sent + len(tokens)
            lps = call.logprobs_of(tokens, scored, chars)
            chars += len(piece)
            return self._answer(call, handle, piece, tokens, finish, stream=True, logprobs=lps)

        try:
            if call.chat:  # OpenAI's first chat chunk names the role
                yield _sse(self._answer(call, handle, "", [], None, stream=True, role=True))
            echo = call.echo
            async for token in events:
                if echo:  # the prompt goes first, once its prefill (which scores it) is done
                    prompt_text, prompt_ids, scored = call.echoed(handle)
                    yield _sse(chunk(prompt_ids, prompt_text, None, scored))
                    echo = False
                if token is None:
                    rest = [] if call.scores_only else hold.end()
                    out = chunk(rest, text(rest, final=True), call.finish_of(handle))
                elif call.scores_only:
                    continue
                else:
                    ready = hold.push(token)
                    if not ready:
                        continue
                    out = chunk(ready, text(ready), None)
                yield _sse(out)
            yield "data: [DONE]\n\n"
        finally:
            # The client went away mid-stream (the stream is cancelled or closed): stop generating for no one and
            # free the request's KV pages now rather than when it would have finished.
            if not handle.done:
                self.engine.abort(handle.request_id, "client disconnected")

    def _answer(self, call: _Call, handle: RequestHandle, text: str, tokens: list[int], finish: str | None, *,
                stream: bool = False, role: bool = False, logprobs: BaseModel | None = None) -> BaseModel:
        """The endpoint's answer: whole (`stream` False: every token, usage, logprobs), or one streamed chunk (its new
        text, token ids and their `logprobs`; the last, with `finish`, carries the usage; `role`: the chat stream's
        first chunk, which names the role)."""
        usage = _usage(handle, call) if finish is not None or not stream else None
        common = {"id": f"{'chatcmpl' if call.chat else 'cmpl'}-{handle.request_id}", "created": int(time.time()),
                  "model": call.body.model, "usage": usage}
        if not stream:
            scored: list[TokenLogprob | None] = list(handle.logprobs[:len(tokens)])
            if call.echo:  # the whole answer starts with the prompt
                prompt_text, prompt_ids, prompt_scored = call.echoed(handle)
                text, tokens, scored = prompt_text + text, prompt_ids + tokens, prompt_scored + scored
            logprobs = call.logprobs_of(tokens, scored)
        choice = {"token_ids": tokens, "finish_reason": finish, "logprobs": logprobs}
        if not call.chat:
            return CompletionResponse(**common, choices=[Choice(text=text, **choice)])
        if not stream:
            return ChatCompletionResponse(**common, choices=[ChatChoice(message=ChatMessageOut(content=text), **choice)])
        delta = ChatDelta(role="assistant", content="") if role else ChatDelta(content=text)
        return ChatCompletionChunk(**common, choices=[ChatChunkChoice(delta=delta, **choice)])


def _usage(handle: RequestHandle, call: _Call) -> Usage:
    n_prompt, n_out = len(handle.prompt_token_ids), 0 if call.scores_only else len(handle.tokens)
    return Usage(prompt_tokens=n_prompt, completion_tokens=n_out, total_tokens=n_prompt + n_out,
                 num_preemptions=handle.num_preemptions, num_recomputed_tokens=handle.num_recomputed_tokens)


def _sse(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def _logit_bias(body: CompletionRequest | ChatCompletionRequest, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` (token ids as strings) as (id, bias) pairs, every id within the model's vocabulary."""
    pairs = tuple(sorted((int(t), float(b)) for t, b in (body.logit_bias or {}).items()))
    outside = [t for t, _ in pairs if t >= vocab_size]
    if outside:
        raise InputError("logit_bias", outside[:5], f"token ids of {body.model}'s vocabulary: 0 to {vocab_size - 1}")
    return pairs


def _stop_sequences(call: _Call) -> tuple[tuple[int, ...], ...]:
    """OpenAI's `stop` strings as the byte-level token sequences the engine matches."""
    stop = call.body.stop
    if stop is None:
        return ()
    if not call.text:
        raise InputError("stop", stop, "stop strings with a text prompt only (a token-id prompt gets token ids "
                         "back, no text to match)")
    return tuple(tuple(ByteTokenizer().encode(s, add_bos=False)) for s in stop)


async def _events(handle: RequestHandle) -> AsyncIterator[int | None]:
    """The handle's tokens as they come (the engine thread hands them to this event loop), then None."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    handle.subscribe(lambda _h, token: loop.call_soon_threadsafe(queue.put_nowait, token))
    while True:
        token = await queue.get()
        yield token
        if token is None:
            return


def _as_input_error(error: Mapping[str, Any], schema: type[BaseModel] | None = None) -> InputError:
    """A pydantic error as an InputError: where (the JSON path in the body), the value sent, what is allowed. A
    field of `schema` honoured at one value only says so in its own words (its description, "Only …")."""
    loc, msg, value = error.get("loc", ()), error.get("msg", "see errors"), error.get("input")
    where = ".".join(str(p) for p in loc if p != "body") or "body"
    msg = msg.removeprefix("Value error, ")
    field = schema.model_fields.get(where) if schema is not None else None
    if field is not None and (field.description or "").startswith("Only"):
        msg = field.description
    if error.get("type") == "json_invalid":  # FastAPI's: loc is ("body", character offset), input {}
        return InputError("body", None, "a JSON object",
                          problem=f"is not valid JSON: {error.get('ctx', {}).get('error')} at character {loc[-1]}")
    if error.get("type") == "missing":  # the input is the object that lacks the field, not a value of it
        return InputError(where, None, msg, problem="is missing")
    if isinstance(value, bytes):  # FastAPI passes the raw body on when the content type is not JSON
        return InputError(where, value, "a JSON object, sent with Content-Type: application/json")
    return InputError(where, value, msg)


def _is_openai(request: HttpRequest) -> bool:
    return request.url.path in (COMPLETIONS_PATH, CHAT_PATH, MODELS_PATH)


def _error(body: dict[str, Any], status: int, *, openai: bool) -> JSONResponse:
    """An error answer. On the OpenAI-compatible route it has the shape OpenAI clients read, `{"error": {"message",
    "type", "param", "code"}}` (`code`: this project's error kind, `param`: the field), with the project's own
    fields (`where`, `value`, `allowed`, `message`) beside it; elsewhere the `core.errors.InputError` body."""
    if openai:
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {**body, "error": {"message": body.get("message", ""), "type": kind, "param": body.get("where"),
                                  "code": body.get("error")}}
    return _ErrorResponse(body, status_code=status)


class _ErrorResponse(JSONResponse):
    """An error body as strict JSON whatever the value it echoes (`core.errors.strict_json`)."""

    def render(self, content: Any) -> bytes:
        return strict_json(content)


def _jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()]


@dataclass
class RunningAgent:
    """A uvicorn server running in a background thread (tests, benchmarks, `fleetwise worker`)."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> RunningAgent:
    """Start `app` on `host:port` (0: any free port) and return once it accepts connections."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="worker-agent", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the worker agent did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    return RunningAgent(server, thread, f"http://{bound[0]}:{bound[1]}")
