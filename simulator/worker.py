"""`SimulatedWorker`: one GPU as a `core.protocols.WorkerClient`, running the shared scheduler and KV pool with a
LatencyModel in place of the GPU.

Memory (per device): the fleet's usable bytes hold the weights of every replica placed on the GPU (as leader or as
a member of a TP group) and the shared KV page pool, whose capacity is what is left (`KVPool.set_num_pages`). Host
memory (the GPU's share of its node's, `PoolSpec.host_memory_gib`, split by `SimConfig.host_gib_per_gpu`) holds
warm weights (least recently cached evicted first) and swapped or checkpointed KV.

Residency: a replica is ACTIVE (serving; `activating_until_s` set while its weights load — from host memory when
cached there, else from disk, both timed by the LatencyModel), HOST (weights cached warm on this GPU's host), or
COLD (gone). Several active replicas time-share the GPU through one scheduler (one model per iteration) and share
its pool, limited per model when a plan says so (space sharing).

TP > 1: the leader (first GPU) runs the replica's scheduler and pool share; every member reserves the weight shard,
and its pool mirrors the replica's KV page for page as the leader's pool takes and frees it (`KVPool` mirrors): the
replica's KV takes what it uses on every GPU of the group, under its limit if it has one, and shares each member's
pool with the member's own models like any co-located model. An iteration of a TP replica keeps every member busy;
members start nothing of their own meanwhile. Before a GPU schedules, runs of decodes that counted on pages it may
take (its members' own runs and the groups holding them; the group holding it) are cut, and when a GPU of a group
frees pages its partners that wait for pages are woken.

Iterations run in `simulator.iteration` (one event per iteration or run of decodes per busy device; idle devices
cost nothing); replicas load, serve, drain and leave in `simulator.replicas`; actions are applied by
`simulator.apply`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from core.actions import Action, ApplyResult, Residency
from core.catalog import GIB, GPUType
from core.fleet import FleetSpec
from core.latency import LatencyBook, LatencyModel
from core.requests import Request
from core.state import group_id
from core.status import ReplicaStatus, SubmitResult, WorkerStatus
from simulator.config import SimConfig
from simulator.hooks import FleetHooks, LocalHooks
from simulator.iteration import DecodeRun, IterationLoop
from simulator.replicas import Membership, ReplicaLifecycle, SimReplica
from workers.kv_pool import KVPool, pages_for_bytes
from workers.scheduler import Scheduler, SeqStatus, Sequence

__all__ = ["FleetHooks", "LocalHooks", "Membership", "SimReplica", "SimulatedWorker"]


class SimulatedWorker(ReplicaLifecycle, IterationLoop):
    """One GPU of a simulated fleet (see the module docstring). Implements `core.protocols.WorkerClient`."""

    def __init__(self, worker_id: str, fleet: FleetSpec, book: LatencyBook, config: SimConfig,
                 hooks: FleetHooks) -> None:
        pool_spec = fleet.pool_of_gpu(worker_id)
        self._worker_id = worker_id
        self.fleet = fleet
        self.pool_name = pool_spec.name
        self.gpu: GPUType = pool_spec.gpu
        self.price_per_hour = pool_spec.hourly_price
        self.book = book
        self.config = config
        self.hooks = hooks
        self.kernel = hooks.kernel
        self.usable_bytes = fleet.usable_bytes_per_gpu(self.gpu)
        self.host_kv_gib, self.host_weights_gib = config.host_gib_per_gpu(pool_spec.host_memory_gib_per_gpu)
        self.healthy = True
        self.replicas: dict[str, SimReplica] = {}  # led here, any residency
        self.memberships: dict[str, Membership] = {}  # TP groups led elsewhere that this GPU serves in
        self.host_weights: OrderedDict[tuple[str, int], float] = OrderedDict()  # (model, tp) → bytes, LRU first
        self.applied: dict[str, ApplyResult] = {}  # idempotency key → first result
        self.targets: dict[tuple, tuple[int, str]] = {}  # target → (revision, arguments) that last changed it
        self.revision = 0
        self.busy_until_s = 0.0
        self.billed_s = 0.0
        self._billed_since: float | None = None
        self._slo = {c.name: c for c in fleet.slo_classes}
        self._activation_token = 0
        self._pending_activation: dict[str, int] = {}  # replica id → token of its ActivationDone event
        self._reset_device()

    # -- WorkerClient ------------------------------------------------------------------------------------------
    @property
    def worker_id(self) -> str:
        return self._worker_id

    def apply(self, action: Action) -> ApplyResult:
        from simulator.apply import apply_action

        self.interrupt(self.kernel.now_s)
        return apply_action(self, action)

    def submit(self, request: Request) -> SubmitResult:
        """Queue a request on the replica of its model led here (see core.protocols.WorkerClient)."""
        rid = request.request_id
        self.interrupt(self.kernel.now_s)
        if not self.healthy:
            return SubmitResult(request_id=rid, status="rejected", message=f"worker {self.worker_id} is down")
        rep = self._serving.get(request.model) or self._replica_of(request.model)
        if rep is None or rep.residency is Residency.COLD:
            return SubmitResult(request_id=rid, status="rejected",
                                message=f"model {request.model!r} has no replica on {self.worker_id}")
        total = request.prompt_tokens + request.output_tokens
        if request.prompt_tokens >= rep.model.max_context_tokens or total > rep.model.max_context_tokens:
            return SubmitResult(request_id=rid, status="rejected",
                                message=f"prompt {request.prompt_tokens} + output {request.output_tokens} tokens "
                                        f"exceed the context of {request.model} ({rep.model.max_context_tokens})")
        self.enqueue(self.make_sequence(request), rep)
        status = "accepted" if rep.serving else "queued"
        return SubmitResult(request_id=rid, status=status)

    def make_sequence(self, request: Request) -> Sequence:
        window = self.config.group_window_s
        gid = group_id(request.model, request.slo_class, math.floor(request.arrival_s / window) * window)
        return Sequence.from_request(request, self._slo.get(request.slo_class), group_id=gid)

    def enqueue(self, seq: Sequence, rep: SimReplica, *, kv_on_host: bool = False) -> None:
        """Queue a sequence on a replica led here (parked while the replica's weights are only on host)."""
        self.interrupt(self.kernel.now_s)
        rep.last_request_s = seq.arrival_s if rep.last_request_s is None else max(rep.last_request_s, seq.arrival_s)
        if rep.residency is not Residency.ACTIVE:
            seq.status = SeqStatus.WAITING
            rep.parked.append(seq)
            return
        if not self.iterating and (lm := self._lm.get(seq.model)) is not None:
            seq.intake_s = lm.admit_s  # an idle engine's thread sleeps: the request pays its wake-up (core.latency)
        self.scheduler.add(seq, kv_on_host=kv_on_host)
        if rep.activating_until_s is None:
            self.kick()

    def status(self) -> WorkerStatus:
        self.interrupt(self.kernel.now_s)  # so that progress is exact as of now
        pool = self.pool
        return WorkerStatus(
            worker_id=self.worker_id, pool=self.pool_name, gpu_type=self.gpu.name, healthy=self.healthy,
            time_s=self.kernel.now_s, memory_total_gib=self.gpu.memory_gib,
            memory_weights_gib=self.weight_bytes / GIB, kv_page_bytes=pool.page_bytes,
            kv_pages_total=pool.num_pages, kv_pages_used=pool.num_used_pages,
            host_kv_pages_used=pool.host_pages_used,
            replicas=tuple(self._replica_status(r) for r in sorted(self.replicas.values(), key=lambda r: r.replica_id)),
            member_of=tuple(sorted(self.memberships)), revision=self.revision,
        )

    def _replica_status(self, rep: SimReplica) -> ReplicaStatus:
        name = rep.model.name
        resident = self.scheduler.has_model(name)
        sched, pool = self.scheduler, self.pool
        return ReplicaStatus(
            replica_id=rep.replica_id, model=name, residency=rep.residency, tp=rep.tp, gpu_ids=rep.gpu_ids,
            kv_limit_pages=rep.kv_limit_pages,
            kv_pages_used=pool.pages_used(name) if resident else 0,
            limit_revision=pool.limit_revision(name) if resident else 0,
            limit_pending=pool.limit_pending(name) if resident else False,
            num_running=sched.num_running(name) if resident else 0,
            num_waiting=(sched.num_queued(name) if resident else 0) + len(rep.parked),
            num_swapped=sched.num_with_status(SeqStatus.SWAPPED, name) if resident else 0,
            num_offline_paused=sched.num_with_status(SeqStatus.PAUSED_OFFLINE, name) if resident else 0,
            activating_until_s=rep.activating_until_s, draining=rep.draining, last_request_s=rep.last_request_s,
        )

    # -- memory ------------------------------------------------------------------------------------------------
    def _reset_device(self) -> None:
        cfg = self.config
        self.weight_bytes = 0.0
        self.pool = KVPool(self._capacity_pages(), page_bytes=cfg.page_bytes,
                           host_capacity_bytes=int(self.host_kv_gib * GIB))
        self.scheduler = Scheduler(self.pool, cfg.scheduler)
        self._serving: dict[str, SimReplica] = {}  # model → its serving replica led here (the hot lookup)
        self._draining: dict[str, SimReplica] = {}  # model → its replica finishing its running requests
        self._lm: dict[str, LatencyModel] = {}
        self._swap_s_per_token: dict[str, float] = {}
        self._tp_members: dict[str, tuple[SimulatedWorker, ...]] = {}
        self._members: tuple[SimulatedWorker, ...] | None = None  # all of _tp_members' (None: to compute)
        self._run: DecodeRun | None = None  # the run of repeated decodes in flight, if any
        self._busy_by: SimulatedWorker | None = None  # the TP leader whose iteration holds this GPU
        self.epoch = getattr(self, "epoch", 0) + 1  # events of an earlier epoch are ignored
        self.iterating = False

    def _capacity_pages(self) -> int:
        return pages_for_bytes(self.usable_bytes - getattr(self, "weight_bytes", 0.0), self.config.page_bytes)

    def free_bytes(self) -> float:
        """Memory neither holding weights nor KV pages now (TP groups' mirrored pages included)."""
        return (self._capacity_pages() - self.pool.num_used_pages) * self.config.page_bytes

    def reserve(self, weight_bytes: float, membership: Membership | None = None) -> bool:
        """Take memory for weights; False, changing nothing, if the pool cannot shrink."""
        now = self.kernel.now_s
        self.interrupt(now)  # runs in flight count on the pages they checked were free: this one's …
        if self._busy_by is not None:
            self._busy_by.interrupt(now)  # … and that of the group holding it (its pages mirror here)
        self.weight_bytes += weight_bytes
        if membership is not None:
            self.memberships[membership.replica_id] = membership
        if self.pool.set_num_pages(self._capacity_pages()):
            self._billing()
            return True
        self.weight_bytes -= weight_bytes
        if membership is not None:
            del self.memberships[membership.replica_id]
        return False

    def release(self, weight_bytes: float, membership_id: str | None = None) -> None:
        self.weight_bytes = max(0.0, self.weight_bytes - weight_bytes)
        if membership_id is not None:
            self.memberships.pop(membership_id, None)
        self.pool.set_num_pages(self._capacity_pages())
        self._billing()

    def cache_weights(self, model: str, tp: int, weight_bytes: float) -> None:
        """Keep a replica's weights warm in host memory, evicting the least recently cached beyond capacity."""
        self.host_weights[(model, tp)] = weight_bytes
        self.host_weights.move_to_end((model, tp))
        limit = self.host_weights_gib * GIB
        while sum(self.host_weights.values()) > limit and self.host_weights:
            old, old_tp = next(iter(self.host_weights))
            for rep in [r for r in self.replicas.values() if r.model.name == old and r.tp == old_tp
                        and r.residency is Residency.HOST]:
                self.forget(rep)
            self.host_weights.pop((old, old_tp), None)

    def forget(self, rep: SimReplica) -> None:
        """Drop a replica whose weights are only on host (to cold): requests parked on it go back to the router."""
        self.host_weights.pop((rep.model.name, rep.tp), None)
        rep.residency = Residency.COLD
        self.hooks.requeue(rep.parked)
        rep.parked = []
        self.replicas.pop(rep.replica_id, None)
        self.hooks.replica_changed(self, rep.replica_id)

    # -- availability and cost ---------------------------------------------------------------------------------
    def fail(self) -> None:
        """The GPU is gone (spot preemption, failure): its work goes back to the router, TP groups fall apart."""
        for rep in list(self.replicas.values()):
            if rep.residency is Residency.ACTIVE:
                self.stop_serving(rep, Residency.COLD)
            else:
                self.hooks.requeue(rep.parked)
        for membership in list(self.memberships.values()):
            leader = self.hooks.worker(membership.leader)
            rep = leader.replicas.get(membership.replica_id) if leader is not None else None
            if rep is not None and rep.residency is Residency.ACTIVE:
                leader.stop_serving(rep, Residency.COLD)
        self.replicas.clear()
        self.memberships.clear()
        self.host_weights.clear()
        self.healthy = False
        self._reset_device()
        self._pending_activation.clear()
        self._billing()

    def recover(self) -> None:
        """The GPU is back, empty."""
        self.healthy = True
        self.busy_until_s = max(self.busy_until_s, self.kernel.now_s)

    @property
    def billed(self) -> bool:
        """Holding weights (a replica active, loading, or reserved as a TP member): the GPU is paid for."""
        return self.healthy and self.weight_bytes > 0

    def _billing(self) -> None:
        now = self.kernel.now_s
        if self.billed and self._billed_since is None:
            self._billed_since = now
            self.hooks.billing_changed(self)
        elif not self.billed and self._billed_since is not None:
            self.billed_s += now - self._billed_since
            self._billed_since = None
            self.hooks.billing_changed(self)

    def billed_seconds(self, now: float) -> float:
        return self.billed_s + (now - self._billed_since if self._billed_since is not None else 0.0)


