"""Replicas on a simulated GPU: what the leader keeps of each (`SimReplica`), a member's share of a TP group
(`Membership`), and their life — loading, serving, draining (or its cancellation), leaving — as the
`ReplicaLifecycle` part of `SimulatedWorker` (see simulator.worker for residency and memory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.actions import Residency
from core.fleet import ServedModel
from core.latency import LatencyModel
from simulator.kernel import Priority
from simulator.latency import kv_layout, preemption_costs
from workers.kv_pool import KVLayout
from workers.scheduler import SeqStatus, Sequence

if TYPE_CHECKING:
    from simulator.worker import SimulatedWorker


@dataclass(slots=True, eq=False)
class SimReplica:
    """A replica as its leader worker keeps it."""

    replica_id: str
    model: ServedModel
    tp: int
    gpu_ids: tuple[str, ...]
    lm: LatencyModel
    layout: KVLayout
    residency: Residency = Residency.ACTIVE
    activating_until_s: float | None = None
    kv_limit_pages: int | None = None  # the plan's per-GPU limit (None: the shared pools bound it)
    draining: bool = False  # finishing its running requests before leaving
    drain_to: Residency = Residency.HOST
    drain_keys: list[str] = field(default_factory=list)  # deferred deactivations (idempotency keys) it settles
    last_request_s: float | None = None
    serving_since_s: float = 0.0  # when it last started serving (idle time counts from here)
    parked: list[Sequence] = field(default_factory=list)  # submitted while only on host: wait for activation

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self.model.arch.weight_bytes / self.tp

    @property
    def serving(self) -> bool:
        return self.residency is Residency.ACTIVE and self.activating_until_s is None and not self.draining


@dataclass(slots=True, frozen=True)
class Membership:
    """This GPU's share of a TP replica led by another GPU."""

    replica_id: str
    leader: str
    weight_bytes: float


class ActivationDone:
    """A replica's weights are loaded: it starts serving."""

    __slots__ = ("replica_id", "time_s", "token", "worker")
    priority = Priority.COMPLETION

    def __init__(self, time_s: float, worker: SimulatedWorker, replica_id: str, token: int) -> None:
        self.time_s, self.worker, self.replica_id, self.token = time_s, worker, replica_id, token

    def handle(self) -> None:
        self.worker._activation_done(self.replica_id, self.token)


class ReplicaLifecycle:
    """Mixin of `SimulatedWorker`: a replica's life on its leader GPU."""

    def _replica_of(self, model: str) -> SimReplica | None:
        return next((r for r in self.replicas.values() if r.model.name == model), None)

    def latency(self, model: ServedModel, tp: int) -> LatencyModel:
        return self.book.get(model.arch, self.gpu, tp)

    def new_replica(self, replica_id: str, model: ServedModel, tp: int, gpu_ids: tuple[str, ...]) -> SimReplica:
        return SimReplica(replica_id, model, tp, gpu_ids, self.latency(model, tp),
                          kv_layout(model.arch, tp, self.config.page_bytes, self.config.max_block_tokens))

    def start_serving(self, rep: SimReplica, revision: int, duration_s: float) -> None:
        """Register a replica whose memory is reserved: it serves after `duration_s` (its weights load)."""
        name = rep.model.name
        members = tuple(w for g in rep.gpu_ids[1:] if (w := self.hooks.worker(g)) is not None)
        self.scheduler.add_model(name, rep.layout, limit_pages=rep.kv_limit_pages, revision=revision,
                                 active=False, preemption_costs=preemption_costs(rep.lm),
                                 mirrors=tuple(m.pool for m in members), latency=rep.lm)
        self._lm[name] = rep.lm
        self._swap_s_per_token[name] = rep.lm.kv_bytes_per_token / rep.tp / rep.lm.kv_swap_bytes_per_s
        if members:
            self._tp_members[name] = members
            self._members = None
        rep.residency = Residency.ACTIVE
        rep.draining = False
        rep.activating_until_s = self.kernel.now_s + duration_s
        for seq in rep.parked:
            self.scheduler.add(seq)
        rep.parked = []
        self.replicas[rep.replica_id] = rep
        self._activation_token += 1
        self.kernel.schedule(ActivationDone(rep.activating_until_s, self, rep.replica_id, self._activation_token))
        self._pending_activation[rep.replica_id] = self._activation_token
        self.hooks.replica_changed(self, rep.replica_id)

    def _activation_done(self, replica_id: str, token: int) -> None:
        if self._pending_activation.get(replica_id) != token:
            return  # superseded: deactivated or re-activated meanwhile
        del self._pending_activation[replica_id]
        self.interrupt(self.kernel.now_s)  # a model joining the turns changes the next iteration
        rep = self.replicas[replica_id]
        rep.activating_until_s = None
        rep.serving_since_s = self.kernel.now_s
        self._serving[rep.model.name] = rep
        self.scheduler.set_active(rep.model.name, True)
        self.hooks.replica_changed(self, replica_id)
        self.kick()

    def begin_drain(self, rep: SimReplica, to: Residency) -> None:
        """Stop taking requests; queued ones go back to the router; leave once the running ones finish."""
        rep.draining, rep.drain_to = True, to
        self._serving.pop(rep.model.name, None)
        self._draining[rep.model.name] = rep
        self.hooks.replica_changed(self, rep.replica_id)
        self._release_queued(rep)
        self._maybe_finish_drain(rep)

    def cancel_drain(self, rep: SimReplica) -> None:
        """Serve again (the replica was activated while draining): it takes requests again, and the deactivations
        waiting for its drain end unfinished (their dependents never start)."""
        name = rep.model.name
        rep.draining = False
        self._draining.pop(name, None)
        self._serving[name] = rep
        self._settle_drain(rep, ok=False, message=f"drain of {rep.replica_id} cancelled by an activation")
        self.hooks.replica_changed(self, rep.replica_id)
        self.kick()

    def _settle_drain(self, rep: SimReplica, *, ok: bool, message: str) -> None:
        """Tell the simulation how the deferred deactivations of this replica ended: left (`ok`, their weight copy
        still to come), or cancelled."""
        keys, rep.drain_keys = rep.drain_keys, []
        after_s = rep.lm.host_to_gpu_s if ok and rep.residency is Residency.HOST else 0.0
        for key in keys:
            self.hooks.drain_settled(key, ok=ok, after_s=after_s, message=message)

    def _release_queued(self, rep: SimReplica) -> None:
        name = rep.model.name
        queued = [s.seq_id for s in self.scheduler.sequences(name) if s.status is not SeqStatus.RUNNING]
        if queued:
            self.hooks.requeue(self.scheduler.remove(queued))

    def _maybe_finish_drain(self, rep: SimReplica) -> None:
        if rep.draining and self.scheduler.num_live(rep.model.name) == 0:
            self.stop_serving(rep, rep.drain_to)

    def stop_serving(self, rep: SimReplica, to: Residency) -> None:
        """Take a replica off the GPUs now: its sequences go back to the router, its memory is freed."""
        name = rep.model.name
        self.interrupt(self.kernel.now_s)
        self._pending_activation.pop(rep.replica_id, None)
        returned = self.scheduler.remove_model(name) if self.scheduler.has_model(name) else []
        for table in (self._serving, self._draining, self._lm, self._tp_members):
            table.pop(name, None)
        self._members = None
        self.release(rep.weight_bytes_per_gpu)
        for gpu_id in rep.gpu_ids[1:]:
            member = self.hooks.worker(gpu_id)
            if member is not None and rep.replica_id in member.memberships:
                member.release(rep.weight_bytes_per_gpu, rep.replica_id)
                member.kick()  # its own work may have waited for the group's pages
        rep.draining = False
        rep.activating_until_s = None
        if to is Residency.HOST:
            rep.residency = Residency.HOST
            self.cache_weights(name, rep.tp, rep.model.arch.weight_bytes)
        else:
            rep.residency = Residency.COLD
            returned += rep.parked
            rep.parked = []
            del self.replicas[rep.replica_id]
        self.hooks.replica_changed(self, rep.replica_id)  # the router stops targeting it first …
        self.hooks.requeue(returned)  # … then its requests go back
        self._settle_drain(rep, ok=True, message=f"{rep.replica_id} left; weights to {to.value}")
