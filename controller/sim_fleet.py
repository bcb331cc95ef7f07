"""Simulated GPUs that live on a controller's clock: the `sim` executor backend of `fleetwise serve` and the
simulated part of `fleetwise demo`.

The simulator's `SimulatedWorker`s share one discrete-event kernel. Here that kernel is driven by a wall clock
(`core.clock.WallClock`, possibly accelerated) instead of by a trace replay: before every call — status, apply,
submit — and on `advance()`, the kernel handles every event due by `clock.now()`. So the controller, the executor
and the demo's request replay talk to them exactly as to real workers (the `WorkerClient` protocol), while the
GPUs behave as the simulator says.

Finished and dropped requests are collected for telemetry (`take_done`). A request its replica gives back — queued
on a replica that starts to drain, or in flight on one that leaves or whose GPU is reclaimed — is sent again to
the least busy replica of its model that still takes requests here, as the simulator's fleet router re-sends it
(`_Resend`); only a request whose model has none left is dropped, with reason `no_router` (the executor's router
routes new arrivals only).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from core.actions import Action, ApplyResult, Residency
from core.fleet import FleetSpec
from core.latency import LatencyBook
from core.protocols import Clock
from core.requests import Request
from core.status import SubmitResult, WorkerStatus
from simulator.config import SimConfig
from simulator.fleet import AvailabilityChange
from simulator.kernel import Kernel, Priority
from simulator.worker import LocalHooks, SimulatedWorker
from workers.scheduler import Sequence


class ClockedSimFleet:
    """Simulated workers of `gpu_ids` (default: every GPU of the fleet) on `clock`. Thread-safe.

    `availability` (e.g. `simulator.availability.availability_changes` of a spot trace) takes GPUs away and brings
    them back on the clock: a GPU taken away drops its work and reports itself unhealthy until it returns, empty.
    """

    def __init__(self, fleet: FleetSpec, clock: Clock, *, gpu_ids: Iterable[str] | None = None,
                 book: LatencyBook | None = None, config: SimConfig | None = None,
                 availability: Iterable[AvailabilityChange] = ()) -> None:
        self.clock = clock
        # The simulator's hooks for workers without a fleet simulation: they share its kernel, keep finished and
        # dropped sequences, and re-send what a replica gives back (`_Resend`).
        self.hooks = _Resend(kernel=Kernel(start_s=clock.now()))
        self.lock = threading.RLock()
        ids = list(gpu_ids) if gpu_ids is not None else fleet.gpu_ids()
        for g in ids:
            self.hooks.workers[g] = SimulatedWorker(g, fleet, book or LatencyBook(), config or SimConfig(), self.hooks)
        kernel = self.hooks.kernel
        for change in availability:
            if change.gpu_id in self.hooks.workers:
                kernel.schedule(_GpuChange(max(change.time_s, kernel.now_s), self, change.gpu_id, change.up))

    @property
    def workers(self) -> dict[str, SimulatedWorker]:
        return self.hooks.workers

    def clients(self) -> list[ClockedWorker]:
        return [ClockedWorker(self, w) for w in self.workers.values()]

    def advance(self) -> None:
        """Handle every simulated event due by the clock's now."""
        with self.lock:
            kernel = self.hooks.kernel
            kernel.run(until_s=max(self.clock.now(), kernel.now_s))

    def take_done(self) -> tuple[list[Sequence], list[Sequence]]:
        """Sequences finished and dropped since the last call (each returned once)."""
        with self.lock:
            done, self.hooks.finished = self.hooks.finished, []
            dropped, self.hooks.dropped = self.hooks.dropped, []
        return done, dropped


class _Resend(LocalHooks):
    """`LocalHooks` whose requeue re-sends each request to the least busy replica of its model that takes requests
    on these workers — serving, else still loading (it waits there as at the router) — and drops it (`no_router`)
    only when its model has none. The re-send is an event at the same instant, so that a worker giving requests
    back (a GPU being reclaimed, a replica leaving) has finished changing before the targets are chosen."""

    def requeue(self, seqs: Iterable[Sequence]) -> None:
        if seqs := list(seqs):
            self.kernel.schedule(_Resent(self.kernel.now_s, self, seqs))

    def resend(self, seqs: list[Sequence]) -> None:
        lost = []
        for seq in seqs:
            target = min(((w, rep) for w in self.workers.values() if w.healthy for rep in w.replicas.values()
                          if rep.model.name == seq.model and rep.residency is Residency.ACTIVE and not rep.draining),
                         key=lambda wr: (not wr[1].serving, wr[0].scheduler.num_live(seq.model)), default=None)
            if target is None:
                lost.append(seq)
            else:
                target[0].enqueue(seq, target[1])
        super().requeue(lost)


@dataclass(slots=True)
class _Resent:
    """Requests a replica gave back, re-sent at `time_s` (a kernel event)."""

    time_s: float
    hooks: _Resend
    seqs: list[Sequence]
    priority: int = Priority.ARRIVAL

    def handle(self) -> None:
        self.hooks.resend(self.seqs)


@dataclass(slots=True)
class _GpuChange:
    """A simulated GPU leaves or comes back (a kernel event)."""

    time_s: float
    fleet: ClockedSimFleet
    gpu_id: str
    up: bool
    priority: int = Priority.AVAILABILITY

    def handle(self) -> None:
        worker = self.fleet.workers[self.gpu_id]
        if self.up and not worker.healthy:
            worker.recover()
        elif not self.up and worker.healthy:
            worker.fail()


class ClockedWorker:
    """`core.protocols.WorkerClient` of one simulated GPU: brings the simulation up to now, then calls it."""

    def __init__(self, fleet: ClockedSimFleet, worker: SimulatedWorker) -> None:
        self.fleet, self.inner = fleet, worker

    @property
    def worker_id(self) -> str:
        return self.inner.worker_id

    def status(self) -> WorkerStatus:
        with self.fleet.lock:
            self.fleet.advance()
            return self.inner.status()

    def apply(self, action: Action) -> ApplyResult:
        with self.fleet.lock:
            self.fleet.advance()
            return self.inner.apply(action)

    def submit(self, request: Request) -> SubmitResult:
        with self.fleet.lock:
            self.fleet.advance()
            return self.inner.submit(request)
