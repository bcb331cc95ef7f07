"""Offline work on harvested capacity: it fills what online serving leaves, is paused first, and resumes from its
KV checkpoints (ConServe, arXiv 2410.01228; the worker checkpoints offline KV to host memory as it decodes).

The plan pauses offline requests (`preempt_offline`: nothing is recomputed) before anything else
1. on a replica whose GPU has a preemption notice (a spot GPU being reclaimed) — and moves them, with their KV, to a
   surviving replica of the model (`migrate_requests`), where they resume;
2. on a replica whose expected online load needs its whole SLO capacity while online requests wait there (online
   work goes first);
and resumes paused offline requests (`resume_offline`) on replicas whose expected online load leaves spare compute,
or where no online request waits: paused work must always make progress once online work is served (pausing on
the expected load alone, with resumption only below a lower threshold, left requests paused for good on replicas
whose load sat between the two).
Expected online load of a replica = its routing weight × its model's probability-weighted online demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.actions import MigrateRequests, PreemptOffline, ResumeOffline
from core.fleet import FleetSpec
from core.state import EventKind, FleetState
from optimizers.placement.packing import PlacedReplica
from optimizers.plan import RunningReplica


@dataclass(frozen=True)
class OfflineSettings:
    busy_share: float = 0.9  # online load at or above this share of SLO capacity pauses offline work there
    spare_share: float = 0.7  # paused offline work resumes where online load stays below this share


@dataclass
class OfflinePlan:
    """Offline actions: `first` run before anything else (no dependencies); `after` wait for their model's routing."""

    first: list[tuple[str | None, object, str]] = field(default_factory=list)
    after: list[tuple[str, str | None, object, str]] = field(default_factory=list)  # (model, worker, args, reason)

    def emit_first(self, b) -> list[int]:
        return [b.add(worker, args, reason) for worker, args, reason in self.first]

    def emit_after(self, b, route: dict[str, int], first: Sequence[int] = ()) -> None:
        for model, worker, args, reason in self.after:
            b.add(worker, args, reason, ([route[model]] if model in route else []) + list(first))


def leaving_gpus(state: FleetState) -> frozenset[str]:
    """GPUs with a preemption notice since the previous plan (the plan must not place anything on them)."""
    return frozenset(e.worker_id for e in state.events if e.kind == EventKind.PREEMPTION_NOTICE and e.worker_id)


def plan_offline(state: FleetState, fleet: FleetSpec, running: Sequence[RunningReplica],
                 targets: Sequence[PlacedReplica], load_rps: dict[str, float], rate_of: dict[str, float],
                 settings: OfflineSettings = OfflineSettings()) -> OfflinePlan:
    """Offline actions (module docstring). `load_rps` and `rate_of` give each target replica's expected online
    load and SLO capacity (req/s)."""
    plan = OfflinePlan()
    offline = {c.name for c in fleet.slo_classes if not c.online}
    busy = {}  # replica → ids of offline requests decoding there
    for r in state.running:
        if r.slo_class in offline:
            busy.setdefault(r.replica_id, []).append(r.request_id)
    paused = {r.replica_id: r.num_offline_paused for w in state.workers for r in w.replicas}
    waiting = {g.replica_id for g in state.groups if g.slo_class not in offline and g.replica_id}
    _reclaimed(plan, state, running, targets, busy, paused)
    kept = {r.replica_id for r in running}
    for t in targets:
        if t.replica_id not in kept:
            continue
        share = load_rps.get(t.replica_id, 0.0) / max(rate_of.get(t.replica_id, 0.0), 1e-9)
        load = f"{t.replica_id}: expected online load {share:.0%} of its SLO capacity"
        if share >= settings.busy_share and busy.get(t.replica_id) and t.replica_id in waiting:
            ids = tuple(busy[t.replica_id])
            why = f"{load}; pause {len(ids)} offline request(s) (KV checkpointed, resumed later)"
            plan.after.append((t.model, t.gpu_ids[0], PreemptOffline(replica_id=t.replica_id, request_ids=ids), why))
        elif paused.get(t.replica_id, 0) > 0 and (share < settings.spare_share or t.replica_id not in waiting):
            spare = "leaves spare compute" if share < settings.spare_share else "has no online request waiting"
            why = f"{load} {spare}; resume {paused[t.replica_id]} paused offline request(s) from their KV checkpoints"
            plan.after.append((t.model, t.gpu_ids[0], ResumeOffline(replica_id=t.replica_id), why))
    return plan


def _reclaimed(plan: OfflinePlan, state: FleetState, running: Sequence[RunningReplica],
               targets: Sequence[PlacedReplica], busy: dict[str, list[int]], paused: dict[str, int]) -> None:
    """Pause offline work on replicas whose GPUs are being reclaimed, and move it to a surviving replica."""
    leaving = leaving_gpus(state)
    for r in running:
        if not set(r.gpu_ids) & leaving or not (busy.get(r.replica_id) or paused.get(r.replica_id)):
            continue
        gone = ", ".join(sorted(set(r.gpu_ids) & leaving))
        why = f"{r.replica_id}: GPU {gone} is being reclaimed; offline work pauses first (KV checkpointed to host)"
        plan.first.append((r.gpu_ids[0], PreemptOffline(replica_id=r.replica_id), why))
        dest = next((t for t in targets if t.model == r.model and not set(t.gpu_ids) & leaving), None)
        if dest is not None and busy.get(r.replica_id):
            ids = tuple(busy[r.replica_id])
            move = MigrateRequests(from_replica_id=r.replica_id, to_replica_id=dest.replica_id, request_ids=ids,
                                   include_running=True)
            why = (f"{r.replica_id}: move {len(ids)} paused offline request(s) with their KV checkpoints to "
                   f"{dest.replica_id}, where they resume")
            plan.after.append((r.model, r.gpu_ids[0], move, why))
