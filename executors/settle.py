"""Waiting for a `deferred` action to complete before its dependents start.

A worker answers `deferred` when it accepted an action that completes on its own later: a draining deactivation
(the replica leaves once its running requests finish) or a KV shrink below the pages in use (it completes as pages
free). What depends on such an action and takes memory (an activation, a KV resize) must wait until the worker
reports it done, or it would fail for want of the memory it frees; other dependents go on at once. The wait polls the worker's status with tenacity and
gives up after `timeout_s`, after which the dependents are skipped (the next replanning cycle sees what happened).
"""

from __future__ import annotations

from typing import Protocol

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

from core.actions import Action, ActivateModel, ApplyResult, DeactivateModel, Residency, ResizeKV
from core.status import WorkerStatus
from executors.report import made_here


class StatusSource(Protocol):
    def status(self) -> WorkerStatus: ...


def needs_memory(action: Action) -> bool:
    """Does `action` take device memory (so it must wait for a deferred drain or shrink it depends on)?"""
    return isinstance(action.args, (ActivateModel, ResizeKV))


def is_settled(action: Action, status: WorkerStatus) -> bool:
    """Has the deferred `action` completed, as far as the worker's status shows?"""
    args = action.args
    replicas = [r for r in status.replicas if r.replica_id == getattr(args, "replica_id", None)]
    if isinstance(args, DeactivateModel):
        return not any(r.residency is Residency.ACTIVE or r.draining for r in replicas)
    if isinstance(args, ResizeKV):
        return not any(r.limit_pending for r in replicas)
    return True  # no other kind defers


def wait_until_settled(action: Action, deferred: ApplyResult, target: StatusSource, *, timeout_s: float,
                       poll_max_s: float = 1.0) -> ApplyResult:
    """Poll `target.status()` until `action` has settled; the deferred result on success, else a failed one."""
    retrying = Retrying(
        retry=retry_if_result(lambda settled: not settled),
        wait=wait_exponential(multiplier=0.02, max=poll_max_s),
        stop=stop_after_delay(timeout_s),
        reraise=False,
    )
    try:
        retrying(lambda: is_settled(action, target.status()))
    except RetryError:
        return made_here(action.idempotency_key, "failed", "",
                         f"deferred action not complete after {timeout_s:g} s ({deferred.message})")
    except Exception as exc:  # noqa: BLE001 — the worker stopped answering while we waited
        return made_here(action.idempotency_key, "failed", "",
                         f"deferred action: worker status unavailable while waiting for it: {exc}", retriable=True)
    return deferred
