"""What a `SimulatedWorker` needs from the simulation it lives in (`FleetHooks`), and `LocalHooks` for workers
simulated on their own (tests, profiling)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from core.actions import Residency
from simulator.kernel import Kernel
from workers.scheduler import SeqStatus, Sequence

if TYPE_CHECKING:
    from simulator.worker import SimulatedWorker


class FleetHooks(Protocol):
    """What a worker needs from the simulation it lives in (FleetSimulation; `LocalHooks` for a lone worker)."""

    kernel: Kernel

    def on_finished(self, seqs: list[Sequence]) -> None: ...

    def on_dropped(self, seqs: list[Sequence]) -> None: ...

    def requeue(self, seqs: list[Sequence]) -> None:
        """Sequences that must be served elsewhere (their replica went away): back to the router."""

    def hand_over(self, seqs: list[Sequence], to_replica_id: str, *, kv_on_host: bool) -> bool:
        """Give sequences to another replica (migration); False if it cannot take them."""

    def replica_changed(self, worker: SimulatedWorker, replica_id: str) -> None:
        """A replica started serving, began draining or went away (the router updates its targets)."""

    def worker(self, gpu_id: str) -> SimulatedWorker | None: ...

    def drain_settled(self, key: str, *, ok: bool, after_s: float, message: str) -> None:
        """A deactivation answered `deferred` (a drain) ended: the replica left (`ok`; its weights finish copying
        `after_s` later) or the drain was cancelled."""

    def billing_changed(self, worker: SimulatedWorker) -> None: ...

    @property
    def instant_activation(self) -> bool:
        """True while the initial deployment is applied: weights count as loaded before the trace starts."""


@dataclass
class LocalHooks:
    """Hooks for workers simulated without a fleet (tests, profiling): finished and dropped sequences are kept,
    requeued ones are dropped with reason `no_router`."""

    kernel: Kernel = field(default_factory=Kernel)
    finished: list[Sequence] = field(default_factory=list)
    dropped: list[Sequence] = field(default_factory=list)
    workers: dict[str, SimulatedWorker] = field(default_factory=dict)
    settled: dict[str, tuple[bool, float]] = field(default_factory=dict)  # drain key → (ok, after_s)

    def on_finished(self, seqs: list[Sequence]) -> None:
        self.finished.extend(seqs)

    def on_dropped(self, seqs: list[Sequence]) -> None:
        self.dropped.extend(seqs)

    def requeue(self, seqs: Iterable[Sequence]) -> None:
        for seq in seqs:
            seq.status, seq.drop_reason = SeqStatus.DROPPED, "no_router"
            self.dropped.append(seq)

    def hand_over(self, seqs: list[Sequence], to_replica_id: str, *, kv_on_host: bool) -> bool:
        for w in self.workers.values():
            rep = w.replicas.get(to_replica_id)
            if rep is not None and rep.residency is Residency.ACTIVE:
                for seq in seqs:
                    w.enqueue(seq, rep, kv_on_host=kv_on_host)
                return True
        return False

    def replica_changed(self, worker: SimulatedWorker, replica_id: str) -> None:
        pass

    def worker(self, gpu_id: str) -> SimulatedWorker | None:
        return self.workers.get(gpu_id)

    def drain_settled(self, key: str, *, ok: bool, after_s: float, message: str) -> None:
        self.settled[key] = (ok, after_s)

    def billing_changed(self, worker: SimulatedWorker) -> None:
        pass

    instant_activation = False
