"""Sending one action: a timeout per attempt, retries with tenacity, and the action log written around each try.

Retried: transport failures (the client raised — by the WorkerClient contract `apply` raises only when the worker
is unreachable — or the attempt timed out) and `failed` answers marked `retriable`. Never retried: `stale` and
`conflict` (a newer or different decision holds the target; sending again cannot change that) and plain `failed`
(bad arguments stay bad). Every attempt re-sends the same idempotency key, so a worker that did apply an attempt
whose answer was lost returns that first result instead of applying twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential, wait_random

from core.actions import Action, ApplyResult
from core.errors import InputError
from core.protocols import ActionLog
from executors.report import UNREACHABLE, made_here

LOADING_KINDS = frozenset({"activate_model", "reconfigure_parallelism"})  # actions that load weights
T = TypeVar("T")
A = TypeVar("A")


class Applier(Protocol):
    """Anything an action can be sent to: a WorkerClient, or the fleet router for `worker_id=None` actions."""

    def apply(self, action: Action) -> ApplyResult: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Timeouts and retries of one action.

    An attempt may take `max(floor, timeout_factor × expected_duration_s)`; the floor covers actions whose
    duration the planner did not estimate (0): `load_timeout_floor_s` for actions that load weights onto a device
    (activation, reconfiguration: a cold 70B load takes tens of seconds), `timeout_floor_s` for the rest. Waits
    between attempts grow exponentially from `backoff_initial_s` up to `backoff_max_s`, plus up to
    `backoff_jitter_s` of random jitter so that retries to a recovering worker do not arrive in lockstep.
    """

    max_attempts: int = 3
    timeout_floor_s: float = 5.0
    load_timeout_floor_s: float = 60.0
    timeout_factor: float = 3.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    backoff_jitter_s: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InputError("retry.max_attempts", self.max_attempts, "an integer ≥ 1")
        for name in ("timeout_factor", "backoff_initial_s", "backoff_max_s", "backoff_jitter_s"):
            if getattr(self, name) < 0:
                raise InputError(f"retry.{name}", getattr(self, name), "a number ≥ 0")
        for name in ("timeout_floor_s", "load_timeout_floor_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"retry.{name}", getattr(self, name), "a positive number of seconds")

    def timeout_s(self, action: Action) -> float:
        floor = self.load_timeout_floor_s if action.kind in LOADING_KINDS else self.timeout_floor_s
        return max(floor, self.timeout_factor * action.expected_duration_s)


@dataclass(frozen=True, slots=True)
class Sent:
    """The final answer to one action after its retries."""

    result: ApplyResult
    attempts: int
    unreachable: bool  # every attempt failed in transport: the worker should be treated as down


@dataclass(frozen=True, slots=True)
class _Answer:
    result: ApplyResult | None
    error: BaseException | None

    @property
    def worth_retrying(self) -> bool:
        return self.error is not None or (self.result is not None and self.result.status == "failed"
                                          and self.result.retriable)


def describe(error: BaseException | None) -> str:
    """One line naming an exception: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def call_with_timeout(fn: Callable[[A], T], arg: A, timeout_s: float) -> T:
    """`fn(arg)` in a daemon thread; raises TimeoutError after `timeout_s`.

    A call that never returns (a worker that stopped answering on an open socket) leaves its daemon thread blocked
    on the socket; it holds no lock of ours and does not keep the process alive at exit.
    """
    future: Future[T] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(arg))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="fleetwise-apply").start()
    return future.result(timeout=timeout_s)


def send(action: Action, target: Applier, log: ActionLog, policy: RetryPolicy,
         sleep: Callable[[float], None] | None = None) -> Sent:
    """Apply `action` on `target`, retrying per `policy`; `mark_started` is logged before every attempt.

    The final outcome is *returned*, not logged: the caller records it (it owns the order of log writes).
    """
    key, timeout_s = action.idempotency_key, policy.timeout_s(action)
    attempts = 0

    def attempt() -> _Answer:
        nonlocal attempts
        attempts += 1
        log.mark_started(key, attempt=attempts)
        try:
            return _Answer(call_with_timeout(target.apply, action, timeout_s), None)
        except TimeoutError:
            return _Answer(None, TimeoutError(f"no answer within {timeout_s:.1f} s"))
        except Exception as exc:  # noqa: BLE001 - the WorkerClient contract: apply raises only when unreachable
            return _Answer(None, exc)

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)
        + wait_random(0, policy.backoff_jitter_s),
        retry=retry_if_result(lambda answer: answer.worth_retrying),
        retry_error_callback=lambda state: state.outcome.result(),
        **({"sleep": sleep} if sleep is not None else {}),
    )
    answer: _Answer = retrying(attempt)
    if answer.result is not None:
        return Sent(answer.result, attempts, unreachable=False)
    message = f"worker {action.worker_id or 'router'} did not answer {attempts} attempt(s); last: " + describe(answer.error)
    return Sent(made_here(key, "failed", UNREACHABLE, message, retriable=True), attempts, unreachable=True)
