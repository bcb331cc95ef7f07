"""How a `SimulatedWorker` applies each action kind of core.actions, under the idempotency and revision contract.

- A repeated idempotency key returns the first result and changes nothing.
- Each action changes a *target*: a replica's residency (activate, deactivate, reconfigure), its KV limit, its queue
  order, or one request set (evict, swap, pause, resume, migrate). A lower revision than the target's last change
  is `stale`; the same revision with other arguments is a `conflict`.
- Bad arguments (unknown replica, wrong leader, no memory) are `failed` with a message; nothing raises.
- A deactivation with drain is `deferred` while running requests remain: the replica takes no new requests and
  leaves when they finish, and only then does the action complete (the worker settles it through
  `FleetHooks.drain_settled`; its `duration_s` is the weight copy that follows). With nothing running it leaves at
  once (`applied`). Activating a draining replica on the same GPUs cancels the drain — it serves again, `applied`
  — and the deferred deactivation ends unfinished, so nothing that depended on it starts (the engine's
  `LocalWorkerClient` answers drains the same way).

Handlers live in a registry keyed by action kind (Vidur's enum → class pattern), one function each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.actions import (
    Action,
    ActivateModel,
    ApplyResult,
    ApplyStatus,
    DeactivateModel,
    EvictRequests,
    MigrateRequests,
    PreemptOffline,
    ReconfigureParallelism,
    Residency,
    ResizeKV,
    ResumeOffline,
    SetQueueOrder,
    SwapInKV,
    SwapOutKV,
)
from core.catalog import GIB
from core.errors import NotFoundError
from simulator.worker import Membership, SimReplica
from workers.kv_pool import limit_pages
from workers.scheduler import SeqStatus

if TYPE_CHECKING:
    from simulator.worker import SimulatedWorker


class Outcome:
    """A handler's answer before it is stamped with the action's key and revision."""

    __slots__ = ("duration_s", "message", "status")

    def __init__(self, status: ApplyStatus, message: str = "", duration_s: float = 0.0) -> None:
        self.status, self.message, self.duration_s = status, message, duration_s


def failed(message: str) -> Outcome:
    return Outcome("failed", message)


def apply_action(worker: SimulatedWorker, action: Action) -> ApplyResult:
    """Apply one action (see the module docstring)."""
    key = action.idempotency_key
    if key in worker.applied:
        return worker.applied[key]
    outcome = _apply(worker, action)
    if outcome.status in ("applied", "deferred"):
        worker.revision = max(worker.revision, action.revision)
    result = ApplyResult(idempotency_key=key, status=outcome.status, message=outcome.message,
                         worker_revision=worker.revision, duration_s=max(0.0, outcome.duration_s))
    worker.applied[key] = result
    return result


def _apply(worker: SimulatedWorker, action: Action) -> Outcome:
    if not worker.healthy:
        return failed(f"worker {worker.worker_id} is down")
    entry = HANDLERS.get(action.kind)
    if entry is None:
        return failed(f"action {action.kind!r} is for the fleet router, not worker {worker.worker_id}")
    handler, target_of = entry
    target = target_of(action.args)
    arguments = action.args.model_dump_json()
    last = worker.targets.get(target)
    if last is not None:
        if action.revision < last[0]:
            return Outcome("stale", f"revision {action.revision} < {last[0]} that last changed {target[0]} of "
                                    f"{target[1]}")
        if action.revision == last[0] and arguments != last[1]:
            return Outcome("conflict", f"revision {action.revision} already changed {target[0]} of {target[1]} "
                                       f"with other arguments")
    outcome = handler(worker, action)
    if outcome.status in ("applied", "deferred"):
        worker.targets[target] = (action.revision, arguments)
    return outcome


# -- residency ---------------------------------------------------------------------------------------------------
def _activate(worker: SimulatedWorker, action: Action) -> Outcome:
    args: ActivateModel = action.args  # type: ignore[assignment]
    return activate(worker, args.model, args.replica_id, args.tp, args.gpu_ids, args.kv_limit_gib, action.revision)


def activate(worker: SimulatedWorker, model_name: str, replica_id: str, tp: int, gpu_ids: tuple[str, ...],
             kv_limit_gib: float | None, revision: int) -> Outcome:
    """Reserve memory on every GPU of the group, then load the weights (from host memory if cached there)."""
    if worker.worker_id != gpu_ids[0]:
        return failed(f"activate {replica_id} on its leader {gpu_ids[0]}, not {worker.worker_id}")
    if tp != len(gpu_ids):
        return failed(f"tp {tp} needs {tp} GPUs, got {len(gpu_ids)}")
    try:
        model = worker.fleet.model(model_name)
    except NotFoundError as exc:
        return failed(str(exc))
    if not model.arch.tp_allowed(tp):
        return failed(f"tp {tp} does not divide the heads of {model.arch.name}")
    members = [worker.hooks.worker(g) for g in gpu_ids[1:]]
    if any(m is None or not m.healthy or m.gpu.name != worker.gpu.name for m in members):
        return failed(f"every GPU of {gpu_ids} must exist, be healthy and be a {worker.gpu.name}")
    old = worker.replicas.get(replica_id)
    if old is not None and old.residency is Residency.ACTIVE:
        if old.gpu_ids == gpu_ids and old.draining:
            worker.cancel_drain(old)
            return Outcome("applied", "was draining: drain cancelled, serving again")
        if old.gpu_ids == gpu_ids:
            return Outcome("applied", "already active", (old.activating_until_s or worker.kernel.now_s)
                           - worker.kernel.now_s)
        return failed(f"{replica_id} is active on {old.gpu_ids}; use reconfigure_parallelism to move it")
    if any(r.model.name == model_name and r.residency is Residency.ACTIVE for r in worker.replicas.values()):
        return failed(f"{worker.worker_id} already leads a replica of {model_name}")
    rep = worker.new_replica(replica_id, model, tp, gpu_ids)
    if kv_limit_gib is not None:
        rep.kv_limit_pages = limit_pages(kv_limit_gib * GIB, worker.config.page_bytes)
    problem = _reserve_group(worker, rep, members)  # type: ignore[arg-type]
    if problem:
        return failed(problem)
    if old is not None:
        rep.parked = old.parked
    cached = worker.host_weights.pop((model_name, tp), None) is not None
    duration = rep.lm.activate_from_host_s if cached else rep.lm.activate_from_cold_s
    if worker.hooks.instant_activation:
        duration = 0.0
    worker.start_serving(rep, revision, duration)
    return Outcome("applied", f"loading {model_name} from {'host memory' if cached else 'disk'}", duration)


def _reserve_group(leader: SimulatedWorker, rep: SimReplica, members: list[SimulatedWorker]) -> str:
    """Take weights on every GPU of the group (their KV is taken as used, mirrored page for page: see
    simulator.worker); on failure undo and say why."""
    weights = rep.weight_bytes_per_gpu
    min_kv = rep.model.max_context_tokens * rep.layout.bytes_per_token  # one full-context sequence (FleetSpec.fit)
    if leader.free_bytes() < weights + min_kv:
        return (f"{leader.worker_id}: {rep.model.name} needs {(weights + min_kv) / GIB:.1f} GiB (weights + one "
                f"full context), {leader.free_bytes() / GIB:.1f} GiB free")
    short = [m.worker_id for m in members if m.free_bytes() < weights + min_kv]
    if short:
        return f"{', '.join(short)}: no room for {rep.model.name}'s weight shard and one full context"
    if not leader.reserve(weights):
        return f"{leader.worker_id}: KV pages in use; free them first"
    done: list[SimulatedWorker] = []
    for m in members:
        if not m.reserve(weights, Membership(rep.replica_id, leader.worker_id, weights)):
            for d in done:
                d.release(weights, rep.replica_id)
            leader.release(weights)
            return f"{m.worker_id}: KV pages in use; free them first"
        done.append(m)
    return ""


def _deactivate(worker: SimulatedWorker, action: Action) -> Outcome:
    args: DeactivateModel = action.args  # type: ignore[assignment]
    rep = worker.replicas.get(args.replica_id)
    if rep is None or rep.model.name != args.model:
        return failed(f"no replica {args.replica_id} of {args.model} on {worker.worker_id}")
    if rep.residency is not Residency.ACTIVE:
        if args.to is Residency.COLD:
            worker.forget(rep)
        return Outcome("applied", f"now {args.to.value}" if args.to is Residency.COLD else "already on host")
    copy_s = rep.lm.host_to_gpu_s if args.to is Residency.HOST else 0.0
    if args.drain and rep.activating_until_s is None:
        worker.begin_drain(rep, args.to)
        if rep.draining:  # the worker settles the action when the drain ends (FleetHooks.drain_settled)
            rep.drain_keys.append(action.idempotency_key)
            running = worker.scheduler.num_running(rep.model.name)
            return Outcome("deferred", f"draining {running} running requests, then weights to {args.to.value} "
                                       f"({copy_s:.2f} s)", copy_s)
        return Outcome("applied", f"nothing to drain; weights to {args.to.value}", copy_s)
    worker.stop_serving(rep, args.to)
    return Outcome("applied", f"stopped; requests re-routed; weights to {args.to.value}", copy_s)


def _reconfigure(worker: SimulatedWorker, action: Action) -> Outcome:
    args: ReconfigureParallelism = action.args  # type: ignore[assignment]
    rep = worker.replicas.get(args.replica_id)
    if rep is None or rep.residency is not Residency.ACTIVE or rep.model.name != args.model:
        return failed(f"no active replica {args.replica_id} of {args.model} on {worker.worker_id}")
    leader = worker.hooks.worker(args.gpu_ids[0])
    if leader is None:
        return failed(f"unknown GPU {args.gpu_ids[0]}")
    limit_gib = rep.kv_limit_pages * worker.config.page_bytes / GIB if rep.kv_limit_pages is not None else None
    worker.stop_serving(rep, Residency.HOST)  # in-flight requests are re-routed and recomputed
    outcome = activate(leader, args.model, args.replica_id, args.tp, args.gpu_ids, limit_gib, action.revision)
    if outcome.status != "applied":
        return failed(f"stopped {args.replica_id}, but the new configuration failed: {outcome.message}")
    return outcome


# -- KV and queues -----------------------------------------------------------------------------------------------
def _serving_replica(worker: SimulatedWorker, replica_id: str) -> SimReplica | None:
    rep = worker.replicas.get(replica_id)
    if rep is None or rep.residency is not Residency.ACTIVE or not worker.scheduler.has_model(rep.model.name):
        return None
    return rep


def _resize(worker: SimulatedWorker, action: Action) -> Outcome:
    args: ResizeKV = action.args  # type: ignore[assignment]
    rep = _serving_replica(worker, args.replica_id)
    if rep is None:
        return failed(f"no active replica {args.replica_id} on {worker.worker_id}")
    pages = limit_pages(args.kv_limit_gib * GIB, worker.config.page_bytes)
    change = worker.pool.set_limit(rep.model.name, pages, action.revision)
    if change.status in ("applied", "deferred"):
        rep.kv_limit_pages = pages
    return Outcome(change.status, change.message or f"{pages} pages per GPU")


def _queue_order(worker: SimulatedWorker, action: Action) -> Outcome:
    args: SetQueueOrder = action.args  # type: ignore[assignment]
    rep = _serving_replica(worker, args.replica_id)
    if rep is None:
        return failed(f"no active replica {args.replica_id} on {worker.worker_id}")
    worker.scheduler.set_queue_order(rep.model.name, args.policy, args.group_ids)
    return Outcome("applied", f"{args.policy} ({len(args.group_ids)} groups)")


def _selected(worker: SimulatedWorker, rep: SimReplica, request_ids: tuple[int, ...], group_ids: tuple[str, ...],
              statuses: frozenset[SeqStatus]) -> list[int]:
    """Ids of the replica's sequences in `statuses` named directly or by group (all of them when neither)."""
    ids, groups = set(request_ids), set(group_ids)
    return [s.seq_id for s in worker.scheduler.sequences(rep.model.name)
            if s.status in statuses and ((not ids and not groups) or s.seq_id in ids or s.group_id in groups)]


def _request_action(run: Callable[[SimulatedWorker, SimReplica, Action], Outcome]) -> Callable[..., Outcome]:
    def handler(worker: SimulatedWorker, action: Action) -> Outcome:
        rid = getattr(action.args, "replica_id", None) or getattr(action.args, "from_replica_id", "")
        rep = _serving_replica(worker, rid)
        if rep is None:
            return failed(f"no active replica {rid} on {worker.worker_id}")
        outcome = run(worker, rep, action)
        worker.kick()
        return outcome

    return handler


RUNNING_ONLY = frozenset({SeqStatus.RUNNING})


@_request_action
def _evict(worker: SimulatedWorker, rep: SimReplica, action: Action) -> Outcome:
    args: EvictRequests = action.args  # type: ignore[assignment]
    if not args.request_ids and not args.group_ids and not args.slo_classes:
        return failed("name the requests, groups or SLO classes to evict")
    ids = _selected(worker, rep, args.request_ids, args.group_ids, RUNNING_ONLY) if (
        args.request_ids or args.group_ids) else []
    classes = set(args.slo_classes)
    ids += [s.seq_id for s in worker.scheduler.sequences(rep.model.name)
            if s.status is SeqStatus.RUNNING and s.slo_class in classes]
    done = worker.scheduler.preempt(ids, args.mode)
    return Outcome("applied", f"preempted {len(done)} running requests ({args.mode.value})")


@_request_action
def _swap_out(worker: SimulatedWorker, rep: SimReplica, action: Action) -> Outcome:
    args: SwapOutKV = action.args  # type: ignore[assignment]
    done = worker.scheduler.swap_out(_selected(worker, rep, args.request_ids, (), RUNNING_ONLY))
    if not done:
        return failed("none of the requests is running here, or host memory is full")
    tokens = sum(worker.scheduler.get(i).num_computed_tokens for i in done)  # type: ignore[union-attr]
    return Outcome("applied", f"swapped out {len(done)} requests", rep.lm.kv_swap_s(tokens))


@_request_action
def _swap_in(worker: SimulatedWorker, rep: SimReplica, action: Action) -> Outcome:
    args: SwapInKV = action.args  # type: ignore[assignment]
    done = worker.scheduler.swap_in(args.request_ids)
    return Outcome("applied", f"{len(done)} requests queued to swap in")


@_request_action
def _preempt_offline(worker: SimulatedWorker, rep: SimReplica, action: Action) -> Outcome:
    args: PreemptOffline = action.args  # type: ignore[assignment]
    ids = args.request_ids or tuple(s.seq_id for s in worker.scheduler.sequences(rep.model.name) if not s.online)
    done = worker.scheduler.pause_offline(ids, args.free_kv_tokens) if ids else []
    return Outcome("applied", f"paused {len(done)} offline requests")


@_request_action
def _resume_offline(worker: SimulatedWorker, rep: SimReplica, action: Action) -> Outcome:
    args: ResumeOffline = action.args  # type: ignore[assignment]
    ids = args.request_ids or tuple(s.seq_id for s in worker.scheduler.sequences(rep.model.name) if not s.online)
    done = worker.scheduler.resume_offline(ids) if ids else []
    return Outcome("applied", f"resumed {len(done)} offline requests")


QUEUED = frozenset({SeqStatus.WAITING, SeqStatus.PREEMPTED, SeqStatus.SWAPPED, SeqStatus.PAUSED_OFFLINE})


@_request_action
def _migrate(worker: SimulatedWorker, rep: SimReplica, action: Action) -> Outcome:
    args: MigrateRequests = action.args  # type: ignore[assignment]
    if not worker.hooks.hand_over([], args.to_replica_id, kv_on_host=False):
        return failed(f"replica {args.to_replica_id} is not serving")
    statuses = QUEUED | RUNNING_ONLY if args.include_running else QUEUED
    ids = _selected(worker, rep, args.request_ids, args.group_ids, statuses)
    seqs = worker.scheduler.remove(ids)
    tokens = sum(s.num_computed_tokens for s in seqs)
    worker.hooks.hand_over(seqs, args.to_replica_id, kv_on_host=args.include_running)
    return Outcome("applied", f"moved {len(seqs)} requests to {args.to_replica_id}", 2 * rep.lm.kv_swap_s(tokens))


def _replica_target(args) -> tuple:
    return ("residency", args.replica_id)


def _request_target(args) -> tuple:
    rid = getattr(args, "replica_id", None) or getattr(args, "from_replica_id", None)
    return (args.kind, rid, getattr(args, "request_ids", ()), getattr(args, "group_ids", ()))


HANDLERS: dict[str, tuple[Callable[[SimulatedWorker, Action], Outcome], Callable[..., tuple]]] = {
    "activate_model": (_activate, _replica_target),
    "deactivate_model": (_deactivate, _replica_target),
    "reconfigure_parallelism": (_reconfigure, _replica_target),
    "resize_kv": (_resize, lambda a: ("kv", a.replica_id)),
    "set_queue_order": (_queue_order, lambda a: ("queue", a.replica_id)),
    "evict_requests": (_evict, _request_target),
    "swap_out_kv": (_swap_out, _request_target),
    "swap_in_kv": (_swap_in, _request_target),
    "preempt_offline": (_preempt_offline, _request_target),
    "resume_offline": (_resume_offline, _request_target),
    "migrate_requests": (_migrate, _request_target),
}
