"""Hand-built plans and statuses for executor tests."""

from __future__ import annotations

from core.actions import Action, ActionArgs, Residency
from core.plan import Plan, Replica, SolverStats, make_plan_id
from core.status import ReplicaStatus, WorkerStatus

GIB = 1024**3
PAGE_BYTES = 2 * 1024 * 1024


def replica(rid: str, model: str, gpus: tuple[str, ...], kv_gib: float = 20.0,
            residency: Residency = Residency.ACTIVE) -> Replica:
    return Replica(replica_id=rid, model=model, pool=gpus[0].split("/")[0], gpu_type="H100-SXM", gpu_ids=gpus,
                   tp=len(gpus), kv_share_gib=kv_gib, residency=residency)


def make_plan(replicas: tuple[Replica, ...] = (), actions: tuple[tuple[str | None, ActionArgs, tuple[int, ...]], ...]
              = (), *, routing: dict[str, dict[str, float]] | None = None, generation: int = 1,
              queues: dict[str, tuple[str, ...]] | None = None, expected_duration_s: float = 0.0) -> Plan:
    """A plan whose actions are (worker_id, args, depends_on), numbered 0, 1, … in the order given."""
    pid = make_plan_id("test", "hand", generation, repr((replicas, actions)))
    acts = tuple(Action(plan_id=pid, seq=i, worker_id=w, args=a, depends_on=d, revision=generation,
                        reason="hand-built", expected_duration_s=expected_duration_s)
                 for i, (w, a, d) in enumerate(actions))
    return Plan(plan_id=pid, fleet="test", policy="hand", generation=generation, created_at_s=0.0,
                replicas=replicas, routing=routing or {}, queues=queues or {}, actions=acts,
                solver=SolverStats(name="hand", status="heuristic"))


def status(worker_id: str, *replicas: ReplicaStatus, healthy: bool = True) -> WorkerStatus:
    return WorkerStatus(worker_id=worker_id, pool=worker_id.split("/")[0], gpu_type="H100-SXM", time_s=0.0,
                        memory_total_gib=80.0, kv_page_bytes=PAGE_BYTES, replicas=replicas, healthy=healthy)


def seen(rid: str, model: str, gpus: tuple[str, ...], kv_gib: float | None = 20.0,
         residency: Residency = Residency.ACTIVE) -> ReplicaStatus:
    pages = None if kv_gib is None else int(kv_gib * GIB // PAGE_BYTES)
    return ReplicaStatus(replica_id=rid, model=model, residency=residency, tp=len(gpus), gpu_ids=gpus,
                         kv_limit_pages=pages)
