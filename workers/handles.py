"""The caller's side of one request in the engine: sampling parameters in, tokens and the outcome out.

The engine thread pushes tokens into a `RequestHandle`; any other thread reads them, waits for the end, or
subscribes a callback (the HTTP agent forwards tokens to its event loop for streaming).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.errors import InputError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on alternatives per token


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop."""

    temperature: float = 0.0  # 0: greedy
    seed: int = 0  # seeds the draws at temperature > 0 (with the position: see workers.runner)
    ignore_eos: bool = False  # generate exactly max tokens (trace replay), even past EOS
    # Token sequences that end the request ("stop") once its output ends with one of them (EOS or not).
    stop: tuple[tuple[int, ...], ...] = ()
    # OpenAI's penalties: each logit drops by frequency × (times the token was generated) + presence × (once it was).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit before sampling)
    # Log-probabilities of each generated token and of the `logprobs` likeliest ones (None: not computed). They are
    # the model's own (log-softmax of its logits), before temperature, penalties and biases.
    logprobs: int | None = None
    # The same for every prompt token after the first (each under the tokens before it), with this many alternatives
    # (vLLM's name; OpenAI's completions ask for it with `echo`). None: not computed.
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 100:
            raise InputError("temperature", self.temperature, "a number in [0, 100] (0: greedy)")
        if any(not seq for seq in self.stop):
            raise InputError("stop", self.stop, "non-empty token sequences")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InputError(name, getattr(self, name), "a number in [-2, 2]")
        for token, bias in self.logit_bias:
            if token < 0 or not -100 <= bias <= 100:
                raise InputError("logit_bias", {token: bias}, "token ids ≥ 0 with biases in [-100, 100]")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
                raise InputError(name, value, f"a number of alternatives from 0 to {MAX_TOP_LOGPROBS}")

    @property
    def penalized(self) -> bool:
        """Whether a penalty reads the tokens generated so far."""
        return bool(self.presence_penalty or self.frequency_penalty)

    @property
    def shapes_logits(self) -> bool:
        """Whether sampling adjusts the logits first (penalties or biases)."""
        return self.penalized or bool(self.logit_bias)

    def stops_at(self, tokens: list[int], token: int) -> bool:
        """`tokens` followed by `token` end with one of the stop sequences."""
        for seq in self.stop:
            n = len(seq)
            if seq[-1] == token and (n == 1 or (len(tokens) >= n - 1 and tuple(tokens[1 - n:]) == seq[:-1])):
                return True
        return False

    def without_stop(self, tokens: list[int]) -> list[int]:
        """`tokens` less the stop sequence they end with (the longest, which starts earliest), as OpenAI's `stop`
        leaves it out of the text."""
        ends = [len(seq) for seq in self.stop if len(tokens) >= len(seq) and tuple(tokens[-len(seq):]) == seq]
        return tokens[:len(tokens) - max(ends)] if ends else tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the likeliest tokens at that step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-probability), likeliest first


class StopHold:
    """Streams tokens without the stop sequence: a token that may begin one is held back until the next tokens
    show it does not (then it is released) or the request ends (then the completed stop sequence is dropped)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.held: list[int] = []

    def push(self, token: int) -> list[int]:
        """The tokens that can be sent now (none while the newest ones may still be a stop sequence's start)."""
        self.held.append(token)
        keep = max((k for seq in self.params.stop for k in range(min(len(seq), len(self.held)), 0, -1)
                    if tuple(self.held[-k:]) == seq[:k]), default=0)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out

    def end(self) -> list[int]:
        """What is left to send once the request has ended."""
        out, self.held = self.params.without_stop(self.held), []
        return out


# Replaying a trace: the trace fixes the output length, so EOS must not cut it short.
REPLAY = SamplingParams(ignore_eos=True)
GREEDY = SamplingParams()  # argmax, nothing else

# callback(handle, token): a new token, or None once the request has ended.
Listener = Callable[["RequestHandle", int | None], None]


class RequestHandle:
    """Tokens of one request as the engine produces them, and how it ended."""

    def __init__(self, request_id: int, model: str, prompt_token_ids: tuple[int, ...], params: SamplingParams) -> None:
        self.request_id = request_id
        self.model = model
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []  # one per token when `params.logprobs` is set
        # One per prompt token when `params.prompt_logprobs` is set: None for the first (nothing comes before it) and
        # for any the engine has not scored yet; complete once the first token is out (the prefill is done).
        self.prompt_logprobs: list[TokenLogprob | None] = (
            [None] * len(prompt_token_ids) if params.prompt_logprobs is not None else [])
        self.finish_reason: str | None = None  # "stop" (EOS), "length", "dropped: …", "removed: …"
        self.ttft_s: float | None = None
        self.tpot_s: float | None = None
        self.num_preemptions = 0
        self.num_recomputed_tokens = 0
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the request ends; False on timeout."""
        return self._done.wait(timeout_s)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` for every token — those already produced first — and once more (None) at the end."""
        with self._lock:
            self._listeners.append(listener)
            produced = list(self.tokens)
            ended = self.done
            for token in produced:  # under the lock, so no new token can slip in before these
                listener(self, token)
            if ended:
                listener(self, None)

    def score_prompt(self, first: int, scored: Sequence[TokenLogprob]) -> None:
        """Log-probabilities of the prompt tokens at positions `first`, `first + 1`, … (a prefill chunk's; a chunk
        computed again after a preemption writes the same values)."""
        with self._lock:
            self.prompt_logprobs[first:first + len(scored)] = scored

    def push(self, token: int, logprob: TokenLogprob | None = None) -> None:
        with self._lock:
            self.tokens.append(token)
            if logprob is not None:
                self.logprobs.append(logprob)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(self, token)

    def finish(self, reason: str, *, ttft_s: float | None = None, tpot_s: float | None = None,
               num_preemptions: int = 0, num_recomputed_tokens: int = 0) -> None:
        with self._lock:
            if self.done:
                return
            self.finish_reason = reason
            self.ttft_s, self.tpot_s = ttft_s, tpot_s
            self.num_preemptions, self.num_recomputed_tokens = num_preemptions, num_recomputed_tokens
            self._done.set()
            listeners = list(self._listeners)
        for listener in listeners:
            listener(self, None)
