"""Factories for the fleet states the baseline planners plan from: worker statuses, loads, groups and events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from core.actions import Action, ActivateModel, DeactivateModel, Residency
from core.fleet import FleetSpec
from core.plan import Plan
from core.state import EventKind, FleetEvent, FleetState, ModelLoad, RequestGroup, RunningRequest, group_id
from core.status import ReplicaStatus, WorkerStatus


def workers(fleet: FleetSpec, *, time_s: float = 0.0, unhealthy: Iterable[str] = (),
            replicas: Mapping[str, list[ReplicaStatus]] | None = None,
            kv_used: Mapping[str, float] | None = None) -> tuple[WorkerStatus, ...]:
    """One status per GPU of the fleet; `kv_used` gives a GPU's fraction of KV pages in use."""
    bad = set(unhealthy)
    out = []
    for pool in fleet.pools:
        for gpu_id in pool.gpu_ids():
            total = 1000
            out.append(WorkerStatus(
                worker_id=gpu_id, pool=pool.name, gpu_type=pool.gpu.name, healthy=gpu_id not in bad, time_s=time_s,
                memory_total_gib=pool.gpu.memory_gib, kv_pages_total=total,
                kv_pages_used=int(total * (kv_used or {}).get(gpu_id, 0.0)),
                replicas=tuple((replicas or {}).get(gpu_id, [])),
            ))
    return tuple(out)


def loads(rates: Mapping[str, float], *, prompt: float = 512, output: float = 128,
          last_arrival_s: Mapping[str, float | None] | None = None) -> dict[str, ModelLoad]:
    return {
        m: ModelLoad(m, r, prompt, output, (last_arrival_s or {}).get(m, 0.0 if r > 0 else None))
        for m, r in rates.items()
    }


def state(fleet: FleetSpec, *, time_s: float = 0.0, plan: Plan | None = None, rates: Mapping[str, float] = {},
          groups: Iterable[RequestGroup] = (), events: Iterable[FleetEvent] = (),
          running: Iterable[RunningRequest] = (), **worker_kw: object) -> FleetState:
    return FleetState(time_s=time_s, workers=workers(fleet, time_s=time_s, **worker_kw),  # type: ignore[arg-type]
                      current_plan=plan, groups=tuple(groups), load=loads(rates), events=tuple(events),
                      running=tuple(running))


def group(model: str, slo: str, *, n: int, deadline_s: float, replica_id: str | None, window_s: float = 0.0,
          arrival_s: float = 0.0, prompt: int = 512) -> RequestGroup:
    return RequestGroup(group_id(model, slo, window_s), model, slo, window_s, n, n * prompt, arrival_s, deadline_s,
                        replica_id)


def event(kind: EventKind, time_s: float, model: str | None = None) -> FleetEvent:
    return FleetEvent(kind, time_s, model=model)


def resident(plan: Plan) -> dict[str, list[ReplicaStatus]]:
    """Worker-side replicas after `plan` was applied: every replica active on its leader."""
    out: dict[str, list[ReplicaStatus]] = {}
    for r in plan.replicas:
        out.setdefault(r.leader, []).append(
            ReplicaStatus(replica_id=r.replica_id, model=r.model, residency=Residency.ACTIVE, tp=r.tp,
                          gpu_ids=r.gpu_ids))
    return out


def placement(plan: Plan) -> dict[str, set[str]]:
    """model → GPUs it occupies in `plan`."""
    out: dict[str, set[str]] = {}
    for r in plan.replicas:
        out.setdefault(r.model, set()).update(r.gpu_ids)
    return out


def kinds(actions: Iterable[Action]) -> list[str]:
    return [a.kind for a in actions]


def activated(plan: Plan) -> list[ActivateModel]:
    return [a.args for a in plan.actions if isinstance(a.args, ActivateModel)]


def deactivated(plan: Plan) -> list[DeactivateModel]:
    return [a.args for a in plan.actions if isinstance(a.args, DeactivateModel)]
