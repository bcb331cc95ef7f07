"""The control side of a worker: `LocalWorkerClient` implements `core.protocols.WorkerClient` over an in-process
`Engine` (the executors' `local` backend; the HTTP agent serves the same object), and `EngineLoop` steps the engine
in a background thread.

Idempotency and revisions (core.actions): the first result of every idempotency key is recorded and returned again
for a repeat. Each action has a target — a model's residency, a replica's KV limit or queue order, a set of
requests — and the revision that last changed it: a lower revision is `stale`, the same revision with other
arguments a `conflict`. KV limits also carry the pool's own revision, whose `deferred` (shrink below the pages in
use) completes as pages free.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from core.actions import (
    Action,
    ActivateModel,
    ApplyResult,
    DeactivateModel,
    EvictRequests,
    MigrateRequests,
    PreemptOffline,
    ReconfigureParallelism,
    ResizeKV,
    ResumeOffline,
    SetQueueOrder,
    SetRouting,
    SwapInKV,
    SwapOutKV,
)
from core.catalog import GIB
from core.errors import InputError
from core.requests import Request
from core.status import SubmitResult, WorkerStatus
from workers.engine import Engine, StepReport
from workers.handles import REPLAY, RequestHandle, SamplingParams
from workers.kv_pool import limit_pages

Outcome = tuple[str, str]  # (status, message)


class EngineLoop:
    """Steps an engine in a daemon thread; sleeps on the engine's condition while there is nothing to run."""

    def __init__(self, engine: Engine, *, idle_wait_s: float = 0.02,
                 on_step: Callable[[StepReport, float | None, float], None] | None = None) -> None:
        self.engine = engine
        self.idle_wait_s = idle_wait_s
        # Called in the loop's thread after every iteration with its report, when the previous iteration ended
        # (`time.perf_counter`; None when the loop idled in between) and when this one did (profiling: back to back,
        # an iteration costs its own time plus the loop's overhead).
        self.on_step = on_step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"engine-{engine.config.worker_id}", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.engine.lock:
            self.engine.wakeup.notify_all()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        engine = self.engine
        previous_end: float | None = None
        while not self._stop.is_set():
            try:
                report = engine.step()
            except BaseException as exc:  # recorded for status/health; the loop must not die silently
                self.error = exc
                engine.halt(f"{type(exc).__name__}: {exc}")
                raise
            if report is None:
                previous_end = None
                with engine.lock:
                    engine.wakeup.wait(self.idle_wait_s)
            else:
                now = time.perf_counter()
                if self.on_step is not None:
                    self.on_step(report, previous_end, now)
                previous_end = now
                # The engine's lock is not fair: re-taken at once, it starved a thread blocked in `submit` (the HTTP
                # agent's, a replay's) for several iterations — 18 of 56 requests arriving at a busy engine missed
                # the next one (bench/sim_fidelity.py). Releasing the GIL lets a waiter that the release woke take
                # the lock first, so a call waits at most one iteration, as `Engine` promises.
                time.sleep(0)


class LocalWorkerClient:
    """`WorkerClient` over an in-process engine. `run_loop=False` leaves stepping to the caller (tests)."""

    def __init__(self, engine: Engine, *, run_loop: bool = True) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._results: dict[str, ApplyResult] = {}  # idempotency key → the first result
        self._targets: dict[str, tuple[int, str]] = {}  # target → (revision, arguments) of its last change
        self._revision = 0
        self._handlers: dict[str, Callable[..., Outcome]] = {
            "activate_model": self._activate, "deactivate_model": self._deactivate, "resize_kv": self._resize_kv,
            "set_routing": self._set_routing, "set_queue_order": self._set_queue_order,
            "evict_requests": self._evict, "swap_out_kv": self._swap_out, "swap_in_kv": self._swap_in,
            "preempt_offline": self._preempt_offline, "resume_offline": self._resume_offline,
            "migrate_requests": self._migrate, "reconfigure_parallelism": self._reconfigure,
        }
        self.loop = EngineLoop(engine).start() if run_loop else None

    def close(self) -> None:
        if self.loop is not None:
            self.loop.stop()

    # -- WorkerClient ----------------------------------------------------------------------------------------------
    @property
    def worker_id(self) -> str:
        return self.engine.config.worker_id

    def status(self) -> WorkerStatus:
        healthy = self.loop is None or self.loop.error is None
        return self.engine.status(revision=self._revision).model_copy(update={"healthy": healthy})

    def submit(self, request: Request) -> SubmitResult:
        """Queue a trace request (output length fixed by the request: EOS does not stop it)."""
        return self.engine.submit(request, REPLAY)[0]

    def submit_with_handle(self, request: Request, params: SamplingParams) -> tuple[SubmitResult, RequestHandle | None]:
        """Queue a request and return its handle (the completions API streams from it)."""
        return self.engine.submit(request, params)

    def apply(self, action: Action) -> ApplyResult:
        with self._lock:
            key = action.idempotency_key
            if key not in self._results:
                self._results[key] = self._apply_new(action)
            return self._results[key]

    # -- dispatch ------------------------------------------------------------------------------------------------
    def _apply_new(self, action: Action) -> ApplyResult:
        key, target, args = action.idempotency_key, _target(action), action.args.model_dump_json()
        last = self._targets.get(target)
        if last is not None and action.revision < last[0]:
            return ApplyResult(idempotency_key=key, status="stale", worker_revision=last[0],
                               message=f"revision {action.revision} < {last[0]}, which last changed {target}")
        if last is not None and action.revision == last[0] and args != last[1]:
            return ApplyResult(idempotency_key=key, status="conflict", worker_revision=last[0],
                               message=f"revision {action.revision} already changed {target} with other arguments")
        if action.worker_id is not None and action.worker_id != self.worker_id:
            return ApplyResult(idempotency_key=key, status="failed",
                               message=f"worker_id {action.worker_id!r} is not this worker ({self.worker_id!r})")
        start = time.perf_counter()
        try:
            status, message = self._handlers[action.kind](action.args, action.revision)
        except InputError as exc:
            status, message = "failed", str(exc)
        if status in ("applied", "deferred"):
            self._targets[target] = (action.revision, args)
            self._revision = max(self._revision, action.revision)
        with self.engine.lock:
            self.engine.wakeup.notify_all()
        revision = self._targets.get(target, (0, ""))[0]
        return ApplyResult(idempotency_key=key, status=status, message=message, worker_revision=revision,  # type: ignore[arg-type]
                           duration_s=time.perf_counter() - start)

    def _model_of(self, replica_id: str) -> str:
        engine = self.engine
        for model, rid in engine.replica_ids.items():
            if rid == replica_id:
                return model
        if engine.store.knows(replica_id):
            return replica_id
        known = sorted(set(engine.replica_ids.values()) | set(engine.store.names))
        raise InputError("replica_id", replica_id, f"a replica or model on this worker: {', '.join(known)}")

    def _replica_of(self, replica_id: str, model: str) -> str:
        """The model of `replica_id`, which an action naming both must agree with (the simulator fails it too)."""
        served = self._model_of(replica_id)
        if served != model:
            raise InputError("model", model, f"{served!r}, the model of replica {replica_id!r}")
        return served

    # -- handlers: residency and memory --------------------------------------------------------------------------
    def _activate(self, args: ActivateModel, revision: int) -> Outcome:
        if args.tp != 1 or len(args.gpu_ids) != 1:
            raise InputError("tp", args.tp, f"tp=1 on one GPU: this engine runs a model on one device "
                             f"(gpu_ids {list(args.gpu_ids)})")
        if args.gpu_ids[0] != self.worker_id:
            raise InputError("gpu_ids", list(args.gpu_ids), f"[{self.worker_id!r}]: this worker's GPU")
        timing = self.engine.activate(args.model, replica_id=args.replica_id)
        message = (f"from {timing.from_residency.value}: disk→host {timing.disk_to_host_s:.3f} s, "
                   f"host→device {timing.host_to_device_s:.3f} s")
        if args.kv_limit_gib is not None:
            status, limit_msg = self._set_limit(args.model, args.kv_limit_gib, revision)
            return status, f"{message}; {limit_msg}"
        return "applied", message

    def _deactivate(self, args: DeactivateModel, revision: int) -> Outcome:
        model = self._replica_of(args.replica_id, args.model)
        if self.engine.deactivate(model, args.to, drain=args.drain):
            return "applied", f"{model} is now {args.to.value}"
        return "deferred", f"{model} drains its requests, then goes to {args.to.value}"

    def _resize_kv(self, args: ResizeKV, revision: int) -> Outcome:
        return self._set_limit(self._model_of(args.replica_id), args.kv_limit_gib, revision)

    def _set_limit(self, model: str, kv_limit_gib: float, revision: int) -> Outcome:
        engine = self.engine
        limit_bytes = kv_limit_gib * GIB
        if not math.isfinite(limit_bytes):  # the schema takes inf, and 1e300 GiB overflows to inf bytes
            pool_gib = engine.pool.num_pages * engine.config.page_bytes / GIB
            raise InputError("kv_limit_gib", kv_limit_gib, f"a finite size in GiB (this worker's pool holds "
                             f"{pool_gib:.4g} GiB; a larger limit does not cap the model)")
        engine.ensure_scheduled(model)
        pages = limit_pages(limit_bytes, engine.config.page_bytes)
        with engine.lock:
            change = engine.pool.set_limit(model, pages, revision)
        return change.status, change.message or f"{model}: limit {pages} pages"

    def _reconfigure(self, args: ReconfigureParallelism, revision: int) -> Outcome:
        self._replica_of(args.replica_id, args.model)
        if args.tp == 1 and args.gpu_ids == (self.worker_id,):
            return "applied", f"{args.model} already runs with tp=1 on {self.worker_id}"
        raise InputError("tp", args.tp, f"tp=1 on gpu_ids [{self.worker_id!r}]: this engine runs a model on one "
                         "device")

    # -- handlers: routing and queues ----------------------------------------------------------------------------
    def _set_routing(self, args: SetRouting, revision: int) -> Outcome:
        raise InputError("kind", "set_routing", "an action for the fleet router (worker_id None), not for a worker")

    def _set_queue_order(self, args: SetQueueOrder, revision: int) -> Outcome:
        model = self._model_of(args.replica_id)
        self.engine.ensure_scheduled(model)
        with self.engine.lock:
            self.engine.scheduler.set_queue_order(model, args.policy, args.group_ids)
        return "applied", f"{model}: queue order {args.policy}"

    def _migrate(self, args: MigrateRequests, revision: int) -> Outcome:
        raise InputError("kind", "migrate_requests", "an action the executor carries out between workers (remove "
                         "the requests from the source, submit them to the target); a worker hosts one replica "
                         "per model")

    # -- handlers: requests --------------------------------------------------------------------------------------
    def _evict(self, args: EvictRequests, revision: int) -> Outcome:
        model = self._model_of(args.replica_id)
        with self.engine.lock:
            sched = self.engine.scheduler
            groups, classes = set(args.group_ids), set(args.slo_classes)
            ids = set(args.request_ids) | {s.seq_id for s in sched.sequences(model)
                                           if s.group_id in groups or s.slo_class in classes}
            done = sched.preempt(sorted(ids), args.mode)
        return "applied", f"evicted {len(done)} running of {len(ids)} requests ({args.mode.value})"

    def _swap_out(self, args: SwapOutKV, revision: int) -> Outcome:
        self._model_of(args.replica_id)
        return self._requests("swapped out", lambda s: s.swap_out(args.request_ids), len(args.request_ids))

    def _swap_in(self, args: SwapInKV, revision: int) -> Outcome:
        self._model_of(args.replica_id)
        return self._requests("released for swap-in", lambda s: s.swap_in(args.request_ids), len(args.request_ids))

    def _preempt_offline(self, args: PreemptOffline, revision: int) -> Outcome:
        self._model_of(args.replica_id)
        return self._requests("paused", lambda s: s.pause_offline(args.request_ids, args.free_kv_tokens),
                              len(args.request_ids) or None)

    def _resume_offline(self, args: ResumeOffline, revision: int) -> Outcome:
        self._model_of(args.replica_id)
        return self._requests("resumed", lambda s: s.resume_offline(args.request_ids), len(args.request_ids) or None)

    def _requests(self, verb: str, op: Callable, asked: int | None) -> Outcome:
        with self.engine.lock:
            done = op(self.engine.scheduler)
        of = f" of {asked}" if asked is not None else ""
        return "applied", f"{verb} {len(done)}{of} requests"


def _target(action: Action) -> str:
    """What an action changes, for the revision contract (see the module docstring)."""
    a = action.args
    if isinstance(a, (ActivateModel, DeactivateModel, ReconfigureParallelism)):
        return f"model:{a.model}"
    if isinstance(a, ResizeKV):
        return f"kv:{a.replica_id}"
    if isinstance(a, SetQueueOrder):
        return f"queue:{a.replica_id}"
    if isinstance(a, SetRouting):
        return f"routing:{a.model}"
    if isinstance(a, MigrateRequests):
        return f"migrate:{a.from_replica_id}:{a.to_replica_id}"
    ids = getattr(a, "request_ids", ())
    return f"{a.kind}:{a.replica_id}:{','.join(map(str, sorted(ids))) or '*'}"
