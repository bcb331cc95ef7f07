"""StateMachineTestWorker: a test worker that keeps the full WorkerClient contract over an in-process state machine.

It is not an engine (no scheduler, no KV pages move), but everything the executor relies on is real: idempotency
by key (a repeat returns the first answer and changes nothing), revisions per target (stale / conflict), deferred
shrinks, failures on bad arguments, weight memory accounting (an activation that does not fit fails), concurrent
callers (a lock; overlapping applies are counted so tests can check per-worker serialisation), and an optional
journal file with one fsynced line per action *applied* (not per repeat) so another process can observe it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.actions import Action, ActivateModel, ApplyResult, Residency
from core.requests import Request
from core.status import ReplicaStatus, SubmitResult, WorkerStatus

GIB = 1024**3
PAGE_BYTES = 2 * 1024 * 1024
# Aspect of a replica each kind changes: revisions are kept per (replica, aspect).
ASPECT = {"activate_model": "residency", "deactivate_model": "residency", "reconfigure_parallelism": "residency",
          "resize_kv": "kv", "set_queue_order": "queue"}


@dataclass
class _Replica:
    model: str
    residency: Residency
    tp: int
    gpu_ids: tuple[str, ...]
    kv_limit_pages: int | None = None
    kv_pages_used: int = 0
    limit_revision: int = 0
    limit_pending: bool = False
    queue: tuple[str, ...] = ()


@dataclass
class TestWorkerConfig:
    __test__ = False  # not a pytest class

    worker_id: str
    model_gib: dict[str, float] = field(default_factory=lambda: {"chat": 16.0, "code": 16.0, "big": 60.0})
    memory_total_gib: float = 80.0
    apply_delay_s: float = 0.0
    journal: Path | None = None
    # kind → how many first attempts of each key answer `failed` with retriable=True ("busy")
    busy_attempts: dict[str, int] = field(default_factory=dict)


class StateMachineTestWorker:
    """A WorkerClient for tests (see the module docstring)."""

    __test__ = False  # not a pytest class

    def __init__(self, config: TestWorkerConfig, before_apply: Callable[[Action], None] | None = None):
        self.config, self.before_apply = config, before_apply
        self._lock = threading.Lock()
        self._replicas: dict[str, _Replica] = {}
        self._targets: dict[tuple[str, str], tuple[int, str]] = {}  # (replica, aspect) → (revision, args json)
        self._answers: dict[str, ApplyResult] = {}
        self._tries: dict[str, int] = {}
        self._revision = 0
        self._in_apply = 0
        self.max_overlap = 0
        self.applied: list[str] = []  # keys whose effect was applied, in order
        self.received: list[str] = []  # every key received, repeats included

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    @property
    def in_apply(self) -> int:
        """Applies in progress right now (callers overlapping in time)."""
        return self._in_apply

    # -- setup helpers -------------------------------------------------------------------------------------

    def seed(self, replica_id: str, model: str, *, residency: Residency = Residency.ACTIVE, kv_limit_gib: float |
             None = None, kv_pages_used: int = 0, gpu_ids: tuple[str, ...] | None = None) -> None:
        """Put a replica in place as if an earlier plan had activated it (revision 0)."""
        pages = None if kv_limit_gib is None else int(kv_limit_gib * GIB // PAGE_BYTES)
        gpus = gpu_ids or (self.worker_id,)
        self._replicas[replica_id] = _Replica(model, residency, len(gpus), gpus, pages, kv_pages_used)

    def restart(self) -> None:
        """Lose every replica and the worker's state, as a crashed and restarted worker would."""
        with self._lock:
            self._replicas.clear()
            self._targets.clear()
            self._answers.clear()
            self._revision = 0

    # -- WorkerClient ----------------------------------------------------------------------------------------

    def status(self) -> WorkerStatus:
        with self._lock:
            replicas = tuple(self._replica_status(rid, r) for rid, r in sorted(self._replicas.items()))
            used = sum(r.kv_pages_used for r in self._replicas.values())
            return WorkerStatus(worker_id=self.worker_id, pool=self.worker_id.split("/")[0], gpu_type="H100-SXM",
                                time_s=time.time(), memory_total_gib=self.config.memory_total_gib,
                                memory_weights_gib=self._weights_gib(), kv_page_bytes=PAGE_BYTES,
                                kv_pages_total=int(self.config.memory_total_gib * GIB // PAGE_BYTES),
                                kv_pages_used=used, replicas=replicas, revision=self._revision)

    def apply(self, action: Action) -> ApplyResult:
        with self._lock:
            self._in_apply += 1
            self.max_overlap = max(self.max_overlap, self._in_apply)
            self.received.append(action.idempotency_key)
        try:
            if self.before_apply is not None:
                self.before_apply(action)
            time.sleep(self.config.apply_delay_s)
            with self._lock:
                return self._apply_once(action)
        finally:
            with self._lock:
                self._in_apply -= 1

    def submit(self, request: Request) -> SubmitResult:
        with self._lock:
            states = {r.residency for r in self._replicas.values() if r.model == request.model}
        if Residency.ACTIVE in states:
            return SubmitResult(request_id=request.request_id, status="accepted")
        if Residency.HOST in states:
            return SubmitResult(request_id=request.request_id, status="queued", message="model is on host")
        return SubmitResult(request_id=request.request_id, status="rejected",
                            message=f"model {request.model!r} is not on worker {self.worker_id}")

    # -- the state machine -----------------------------------------------------------------------------------

    def _apply_once(self, action: Action) -> ApplyResult:
        key = action.idempotency_key
        if key in self._answers:
            return self._answers[key]
        self._tries[key] = self._tries.get(key, 0) + 1
        if self._tries[key] <= self.config.busy_attempts.get(action.kind, 0):
            return self._answer(action, "failed", "busy: still loading another model", retriable=True, keep=False)
        verdict = self._check_revision(action)
        if verdict is not None:
            return verdict
        status, message = self._effect(action)
        if status in ("applied", "deferred"):
            self._revision = max(self._revision, action.revision)
            aspect = ASPECT.get(action.kind)
            if aspect:
                self._targets[(_target(action), aspect)] = (action.revision, action.args.model_dump_json())
            self.applied.append(key)
            self._journal(key)
        return self._answer(action, status, message)

    def _check_revision(self, action: Action) -> ApplyResult | None:
        aspect = ASPECT.get(action.kind)
        if aspect is None:
            return None
        revision, args = self._targets.get((_target(action), aspect), (-1, ""))
        if action.revision < revision:
            return self._answer(action, "stale", f"{_target(action)} {aspect} is at revision {revision}")
        if action.revision == revision and args != action.args.model_dump_json():
            return self._answer(action, "conflict", f"revision {revision} set other {aspect} arguments")
        return None

    def _effect(self, action: Action) -> tuple[str, str]:
        args = action.args
        if isinstance(args, ActivateModel):
            return self._activate(args, action.revision)
        replica = self._replicas.get(_target(action))
        if replica is None:
            return "failed", f"unknown replica {_target(action)!r} on {self.worker_id}"
        if action.kind == "deactivate_model":
            if args.to == Residency.COLD:
                del self._replicas[args.replica_id]
            else:
                replica.residency = Residency.HOST
            return "applied", ""
        if action.kind == "resize_kv":
            return self._resize(replica, args.kv_limit_gib, action.revision)
        if action.kind == "set_queue_order":
            replica.queue = args.group_ids
        if action.kind == "reconfigure_parallelism":
            replica.tp, replica.gpu_ids = args.tp, args.gpu_ids
        return "applied", ""

    def _activate(self, args: ActivateModel, revision: int) -> tuple[str, str]:
        if args.model not in self.config.model_gib:
            return "failed", f"unknown model {args.model!r}; known: {sorted(self.config.model_gib)}"
        current = self._replicas.get(args.replica_id)
        extra = 0.0 if current and current.residency == Residency.ACTIVE else self.config.model_gib[args.model]
        if self._weights_gib() + extra > self.config.memory_total_gib:
            return "failed", (f"out of memory: {args.model} needs {extra:.0f} GiB, "
                              f"{self.config.memory_total_gib - self._weights_gib():.0f} GiB free")
        pages = None if args.kv_limit_gib is None else int(args.kv_limit_gib * GIB // PAGE_BYTES)
        self._replicas[args.replica_id] = _Replica(args.model, Residency.ACTIVE, args.tp, args.gpu_ids, pages,
                                                   limit_revision=revision)
        return "applied", ""

    def _resize(self, replica: _Replica, kv_limit_gib: float, revision: int) -> tuple[str, str]:
        pages = int(kv_limit_gib * GIB // PAGE_BYTES)
        replica.kv_limit_pages, replica.limit_revision = pages, revision
        replica.limit_pending = pages < replica.kv_pages_used
        return ("deferred", "shrink waits for pages in use") if replica.limit_pending else ("applied", "")

    def _answer(self, action: Action, status: str, message: str, *, retriable: bool = False,
                keep: bool = True) -> ApplyResult:
        result = ApplyResult(idempotency_key=action.idempotency_key, status=status, message=message,
                             worker_revision=self._revision, retriable=retriable)
        if keep:
            self._answers[action.idempotency_key] = result
        return result

    def _weights_gib(self) -> float:
        return sum(self.config.model_gib.get(r.model, 0.0) for r in self._replicas.values()
                   if r.residency == Residency.ACTIVE)

    def _journal(self, key: str) -> None:
        if self.config.journal is None:
            return
        with open(self.config.journal, "a") as f:
            f.write(f"{self.worker_id} {key}\n")
            f.flush()
            os.fsync(f.fileno())

    def _replica_status(self, rid: str, r: _Replica) -> ReplicaStatus:
        return ReplicaStatus(replica_id=rid, model=r.model, residency=r.residency, tp=r.tp, gpu_ids=r.gpu_ids,
                             kv_limit_pages=r.kv_limit_pages, kv_pages_used=r.kv_pages_used,
                             limit_revision=r.limit_revision, limit_pending=r.limit_pending)


def _target(action: Action) -> str:
    args = action.args
    return getattr(args, "replica_id", None) or getattr(args, "from_replica_id", "")


def with_delay(config: TestWorkerConfig, delay_s: float) -> TestWorkerConfig:
    return replace(config, apply_delay_s=delay_s)
