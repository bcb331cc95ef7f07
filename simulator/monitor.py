"""Planner events detected by watching the replicas' queues (every `monitor_interval_s`), for the kinds the planner
subscribes to; each is raised once per replica until the next plan (idle: until the model gets a request again).

- QUEUE_BUILDUP: a replica's queued requests exceed its batch limit (`max_num_seqs`).
- SLO_VIOLATION_PREDICTED: QLM's estimate — a replica's queue drains at its prefill throughput, so the request
  queued last waits about Σ queued prompt tokens × c_prefill (+ one iteration constant per batch of
  `max_num_batched_tokens`); predicted when that wait would carry past the earliest TTFT deadline in the queue.
- MODEL_IDLE: an active model has received nothing for `idle_threshold_s` (Prism's eviction trigger).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from core.state import EventKind, FleetEvent

if TYPE_CHECKING:
    from simulator.fleet import FleetSimulation
    from simulator.worker import SimReplica, SimulatedWorker

WATCHED = frozenset({EventKind.QUEUE_BUILDUP, EventKind.SLO_VIOLATION_PREDICTED, EventKind.MODEL_IDLE})


class QueueMonitor:
    def __init__(self, sim: FleetSimulation) -> None:
        self.sim = sim
        self.kinds = WATCHED & frozenset(sim.planner.subscriptions)
        self._raised: set[tuple[EventKind, str]] = set()
        self._idle: set[str] = set()  # replica ids reported idle and still idle

    def plan_adopted(self) -> None:
        self._raised.clear()

    def check(self, now: float) -> None:
        if not self.kinds:
            return
        for worker in self.sim.workers.values():
            for rep in worker.replicas.values():
                if rep.serving:
                    self._check_replica(worker, rep, now)

    def _check_replica(self, worker: SimulatedWorker, rep: SimReplica, now: float) -> None:
        cfg = worker.config.scheduler
        name = rep.model.name
        queued = worker.scheduler.num_queued(name)
        if EventKind.QUEUE_BUILDUP in self.kinds and queued > cfg.max_num_seqs:
            self._raise(EventKind.QUEUE_BUILDUP, rep, now, f"{queued} queued > {cfg.max_num_seqs}")
        if EventKind.SLO_VIOLATION_PREDICTED in self.kinds and queued:
            seqs = list(worker.scheduler.queued(name))
            deadline = min(s.ttft_deadline_s for s in seqs)
            if math.isfinite(deadline):
                tokens = sum(s.num_tokens - s.num_computed_tokens for s in seqs)
                wait = tokens * rep.lm.c_prefill_s + math.ceil(tokens / cfg.max_num_batched_tokens) * rep.lm.c0_s
                if now + wait > deadline:
                    self._raise(EventKind.SLO_VIOLATION_PREDICTED, rep, now,
                                f"queue of {len(seqs)} drains in {wait:.2f}s; a deadline is {deadline - now:.2f}s away")
        if EventKind.MODEL_IDLE in self.kinds:
            busy_s = max(rep.last_request_s if rep.last_request_s is not None else -math.inf, rep.serving_since_s)
            if now - busy_s < worker.config.idle_threshold_s:
                self._idle.discard(rep.replica_id)
            elif rep.replica_id not in self._idle:
                self._idle.add(rep.replica_id)
                self.sim.raise_event(FleetEvent(EventKind.MODEL_IDLE, now, model=name, worker_id=worker.worker_id,
                                                detail=f"{rep.replica_id}: no request for "
                                                       f"{worker.config.idle_threshold_s:.0f}s"))

    def _raise(self, kind: EventKind, rep: SimReplica, now: float, detail: str) -> None:
        key = (kind, rep.replica_id)
        if key not in self._raised:
            self._raised.add(key)
            self.sim.raise_event(FleetEvent(kind, now, model=rep.model.name, worker_id=rep.gpu_ids[0],
                                            detail=f"{rep.replica_id}: {detail}"))
