"""Worker status snapshots: what each worker reported, kept as history; the newest per worker is the observed
state a planner starts from after a controller restart."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.status import WorkerStatus
from db.fleets import get_fleet
from db.models import WorkerSnapshotRow


def record_worker_statuses(session: Session, *, fleet: str, statuses: Sequence[WorkerStatus]) -> int:
    """Append one snapshot per status; returns how many were written."""
    fleet_id = get_fleet(session, name=fleet).id
    session.add_all(
        WorkerSnapshotRow(
            fleet_id=fleet_id, worker_id=s.worker_id, time_s=s.time_s, healthy=s.healthy,
            payload=s.model_dump(mode="json"),
        )
        for s in statuses
    )
    session.flush()
    return len(statuses)


def latest_worker_statuses(session: Session, *, fleet: str) -> list[WorkerStatus]:
    """The newest snapshot (by `time_s`, then by insertion) of every worker of `fleet`, by worker id."""
    fleet_id = get_fleet(session, name=fleet).id
    w = WorkerSnapshotRow
    rank = func.row_number().over(partition_by=w.worker_id, order_by=(w.time_s.desc(), w.id.desc())).label("rank")
    ranked = select(w.payload, w.worker_id, rank).where(w.fleet_id == fleet_id).subquery()
    rows = session.execute(select(ranked.c.payload).where(ranked.c.rank == 1).order_by(ranked.c.worker_id))
    return [WorkerStatus.model_validate(payload) for (payload,) in rows]


def health_history(session: Session, *, fleet: str, start_s: float, end_s: float) -> list[tuple[float, str, str, bool]]:
    """`(time_s, worker_id, pool, healthy)` of every snapshot of `fleet` with `start_s ≤ time_s ≤ end_s`, oldest
    first: what the controller saw of its workers, round after round (a worker that did not answer has no row)."""
    fleet_id = get_fleet(session, name=fleet).id
    w = WorkerSnapshotRow
    rows = session.execute(
        select(w.time_s, w.worker_id, w.payload["pool"].as_string(), w.healthy)
        .where(w.fleet_id == fleet_id, w.time_s >= start_s, w.time_s <= end_s).order_by(w.time_s, w.id))
    return [(float(t), str(worker), str(pool), bool(healthy)) for t, worker, pool, healthy in rows]
