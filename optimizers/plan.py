"""Plan assembly: diff the target replicas against what runs, order the actions make-before-break, explain each.

Order (each step's `depends_on` names the steps it needs):
1. `resize_kv` shrinks, then activations that fit in memory that is already free;
2. `set_routing` of each changed model, after its new replicas are up;
3. `deactivate_model` of replicas leaving, after their model's routing moved away (drain, then unload);
4. activations that need memory a leaving replica frees, after that replica's deactivation; then their routing;
5. `resize_kv` grows after the shrinks and removals on the same GPU;
6. queue actions (`set_queue_order`, `migrate_requests`, `evict_requests`) after the routing of their model.
Every action carries a reason; the plan id is deterministic in (fleet, policy, generation, input digest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.actions import Action, ActivateModel, DeactivateModel, Residency, ResizeKV, SetRouting
from core.catalog import GIB
from core.plan import Expected, Plan, Replica, SolverStats, make_plan_id
from core.state import FleetState
from optimizers.placement.packing import PlacedReplica


@dataclass(frozen=True)
class RunningReplica:
    """A replica that runs now (from worker status or the current plan); `kv_share_gib` per GPU."""

    replica_id: str
    model: str
    pool: str
    gpu_type: str
    tp: int
    gpu_ids: tuple[str, ...]
    kv_share_gib: float
    memory_gib: float  # per GPU: weights + KV share
    kv_used_gib: float | None = None  # per GPU: KV its requests hold now (None where no worker reports it)


@dataclass
class _Builder:
    plan_id: str
    revision: int
    actions: list[Action] = field(default_factory=list)

    def add(self, worker_id: str | None, args: object, reason: str, depends_on: Sequence[int] = (),
            duration_s: float = 0.0) -> int:
        seq = len(self.actions)
        self.actions.append(Action(plan_id=self.plan_id, seq=seq, worker_id=worker_id, args=args,  # type: ignore[arg-type]
                                   depends_on=tuple(sorted(set(depends_on))), revision=self.revision, reason=reason,
                                   expected_duration_s=duration_s))
        return seq


def running_replicas(state: FleetState, weight_gib_of: dict[str, float]) -> list[RunningReplica]:
    """Active replicas the workers report (their leaders), else those of the current plan."""
    out = []
    for w in state.workers:
        for r in w.replicas:
            if r.residency != Residency.ACTIVE or not w.healthy:
                continue
            kv = (r.kv_limit_pages or 0) * w.kv_page_bytes / GIB
            out.append(RunningReplica(r.replica_id, r.model, w.pool, w.gpu_type, r.tp, r.gpu_ids or (w.worker_id,),
                                      kv, weight_gib_of.get(r.model, 0.0) / max(r.tp, 1) + kv,
                                      r.kv_pages_used * w.kv_page_bytes / GIB))
    if out or state.current_plan is None:
        return out
    return planned_replicas(state, weight_gib_of)


def planned_replicas(state: FleetState, weight_gib_of: dict[str, float]) -> list[RunningReplica]:
    """The active replicas of the current plan on healthy GPUs — what the fleet is being moved to, whether or not
    every activation has happened yet."""
    if state.current_plan is None:
        return []
    healthy = set(state.healthy_gpu_ids) if state.workers else None
    return [RunningReplica(r.replica_id, r.model, r.pool, r.gpu_type, r.tp, r.gpu_ids, r.kv_share_gib,
                           weight_gib_of.get(r.model, 0.0) / r.tp + r.kv_share_gib)
            for r in state.current_plan.replicas if r.residency == Residency.ACTIVE
            and (healthy is None or all(g in healthy for g in r.gpu_ids))]


def diff_actions(b: _Builder, targets: Sequence[PlacedReplica], running: Sequence[RunningReplica], *,
                 usable_gib: dict[str, float], routing: dict[str, dict[str, float]], host_models: frozenset[str],
                 why: dict[str, str], activate_s: dict[str, float]) -> dict[str, int]:
    """Append the placement actions (module docstring); returns model → seq of its last routing action."""
    kept = {t.replica_id for t in targets} & {r.replica_id for r in running}
    leaving = [r for r in running if r.replica_id not in kept]
    new = [t for t in targets if t.replica_id not in kept]
    old = {r.replica_id: r for r in running}
    free = _free_memory(running, usable_gib)
    shrinks = {}
    for t in targets:
        if t.replica_id in kept and t.kv_share_gib < old[t.replica_id].kv_share_gib - 0.25:
            shrinks[t.replica_id] = b.add(t.gpu_ids[0], ResizeKV(replica_id=t.replica_id, kv_limit_gib=_gib_down(t.kv_share_gib)),
                                          f"{t.model}: KV share {old[t.replica_id].kv_share_gib:.1f} → "
                                          f"{t.kv_share_gib:.1f} GiB/GPU, its demand needs less")
            for g in t.gpu_ids:
                free[g] = free.get(g, 0.0) + old[t.replica_id].kv_share_gib - t.kv_share_gib
    first, blocked = [], []
    for t in new:
        if all(free.get(g, 0.0) >= t.memory_gib - 1e-6 for g in t.gpu_ids):
            for g in t.gpu_ids:
                free[g] = free.get(g, 0.0) - t.memory_gib
            first.append(t)
        else:
            blocked.append(t)
    activation = {t.replica_id: _activate(b, t, why, activate_s) for t in first}
    route = _routing(b, {t.model for t in first} | {r.model for r in leaving}, routing, activation, targets)
    removal = {}
    for r in leaving:
        deps = [route[r.model]] if r.model in route else []
        to = Residency.HOST if r.model in host_models or any(t.model == r.model for t in targets) else Residency.COLD
        removal[r.replica_id] = b.add(r.gpu_ids[0], DeactivateModel(model=r.model, replica_id=r.replica_id, to=to),
                                      f"{r.model}: replica on {', '.join(r.gpu_ids)} no longer needed "
                                      f"({_reason(why, r.model, r.pool, 'placement moved it')}); weights to "
                                      f"{to.value}", deps)
    for t in blocked:
        deps = [removal[r.replica_id] for r in leaving if set(r.gpu_ids) & set(t.gpu_ids)]
        activation[t.replica_id] = _activate(b, t, why, activate_s, deps)
    route |= _routing(b, {t.model for t in blocked}, routing, activation, targets, after=route)
    for t in targets:
        if t.replica_id in kept and t.kv_share_gib > old[t.replica_id].kv_share_gib + 0.25:
            deps = list(shrinks.values()) + [removal[r.replica_id] for r in leaving if set(r.gpu_ids) & set(t.gpu_ids)]
            b.add(t.gpu_ids[0], ResizeKV(replica_id=t.replica_id, kv_limit_gib=t.kv_share_gib),
                  f"{t.model}: KV share {old[t.replica_id].kv_share_gib:.1f} → {t.kv_share_gib:.1f} GiB/GPU for its "
                  f"demand", deps)
    return route


def _reason(why: dict[str, str], model: str, pool: str, default: str) -> str:
    """Why a model's replica on a pool changes: the pool-specific reason ('model@pool', e.g. liveput's for a spot
    pool) before the model's."""
    return why.get(f"{model}@{pool}", why.get(model, default))


def _free_memory(running: Sequence[RunningReplica], usable_gib: dict[str, float]) -> dict[str, float]:
    free = dict(usable_gib)
    for r in running:
        for g in r.gpu_ids:
            free[g] = free.get(g, 0.0) - r.memory_gib
    return free


def _activate(b: _Builder, t: PlacedReplica, why: dict[str, str], activate_s: dict[str, float],
              deps: Sequence[int] = ()) -> int:
    args = ActivateModel(model=t.model, replica_id=t.replica_id, tp=t.tp, gpu_ids=t.gpu_ids,
                         kv_limit_gib=_gib_down(t.kv_share_gib))
    return b.add(t.gpu_ids[0], args, f"{t.model}: new TP-{t.tp} replica on {', '.join(t.gpu_ids)} with "
                 f"{t.kv_share_gib:.1f} GiB KV/GPU ({_reason(why, t.model, t.pool, 'placement')})", deps,
                 activate_s.get(t.model, 0.0))


def _routing(b: _Builder, models: set[str], routing: dict[str, dict[str, float]], activation: dict[str, int],
             targets: Sequence[PlacedReplica], after: dict[str, int] | None = None) -> dict[str, int]:
    out = {}
    for model in sorted(models):
        weights = routing.get(model, {})
        deps = [activation[t.replica_id] for t in targets if t.model == model and t.replica_id in activation]
        if after and model in after:
            deps.append(after[model])
        reason = (f"{model}: route over {len(weights)} replica(s) in proportion to their SLO capacity" if weights
                  else f"{model}: no replica left; requests wait for an on-demand activation")
        out[model] = b.add(None, SetRouting(model=model, weights=weights), reason, deps)
    return out


def to_core_replicas(targets: Sequence[PlacedReplica], host_models: frozenset[str], pool_of_model: dict[str, tuple[str, str]]) -> tuple[Replica, ...]:
    """Target replicas as `core.plan.Replica`, plus host-resident models as zero-GPU-share host entries."""
    out = [Replica(replica_id=t.replica_id, model=t.model, pool=t.pool, gpu_type=t.gpu_type, gpu_ids=t.gpu_ids,
                   tp=t.tp, kv_share_gib=_gib_down(t.kv_share_gib), residency=Residency.ACTIVE) for t in targets]
    active = {t.model for t in targets}
    for model in sorted(host_models - active):
        pool, gpu_type = pool_of_model.get(model, ("", ""))
        if pool:
            out.append(Replica(replica_id=f"{model}@host", model=model, pool=pool, gpu_type=gpu_type,
                               gpu_ids=(f"{pool}/host",), kv_share_gib=0.0, residency=Residency.HOST))
    return tuple(out)


def routing_weights(targets: Sequence[PlacedReplica], rate_of: dict[str, float]) -> dict[str, dict[str, float]]:
    """model → replica → weight (its SLO capacity, normalised to sum to 1)."""
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        out.setdefault(t.model, {})[t.replica_id] = max(rate_of.get(t.replica_id, 0.0), 1e-6)
    return {m: {r: round(w / sum(ws.values()), 6) for r, w in ws.items()} for m, ws in out.items()}


def make_plan(*, fleet: str, policy: str, state: FleetState, digest: str, horizon_s: float,
              build: callable, expected: Expected | None, solver: SolverStats, reasons: Sequence[str],  # type: ignore[valid-type]
              replicas: tuple[Replica, ...], routing: dict[str, dict[str, float]],
              queues: dict[str, tuple[str, ...]]) -> Plan:
    """Create the plan: id from (fleet, policy, generation, digest); `build(builder)` appends the actions."""
    generation = state.generation
    plan_id = make_plan_id(fleet, policy, generation, digest)
    b = _Builder(plan_id, generation)
    build(b)
    return Plan(plan_id=plan_id, parent_id=state.current_plan.plan_id if state.current_plan else None, fleet=fleet,
                policy=policy, generation=generation, created_at_s=state.time_s, horizon_s=horizon_s,
                input_digest=digest, replicas=replicas, routing=routing, queues=queues, actions=tuple(b.actions),
                expected=expected, solver=solver, reasons=tuple(reasons))


def _gib_down(gib: float) -> float:
    """A KV share to three decimals, rounded down: rounding up could promise a GPU more memory than it has."""
    return math.floor(gib * 1000) / 1000
