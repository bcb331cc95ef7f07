"""Spot availability as the controller saw it: each spot pool's healthy workers, round after round of status
calls, as an `AvailabilityTrace` the scenario builder forecasts (the same forecaster the what-if `fleetwise` policy
runs on replayed traces, docs/forecasting.md "Availability").

A *round* is one observe stage: the controller asks every worker for its status in parallel (each call within the
backend's status timeout, 5 s by default), so the snapshots of one round lie within seconds of each other and rounds
lie a replanning interval apart (a 5-field cron: a minute or more). Snapshots closer than `ROUND_GAP_S` to the
previous one belong to its round. A pool's count in a round is its workers that answered healthy; a worker that did
not answer, or answered unhealthy, is down. Before the first round the pool is taken at its first count (nothing is
known earlier, and a forecaster reading zeros there would take the pool for empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.fleet import FleetSpec
from workloads.availability import AvailabilityTrace

ROUND_GAP_S = 30.0


def observed_availability(spec: FleetSpec, snapshots: Sequence[tuple[float, str, str, bool]], *, start_s: float,
                          end_s: float) -> dict[str, AvailabilityTrace]:
    """Per spot pool of `spec`, its healthy workers per round of `snapshots` ((time_s, worker_id, pool, healthy),
    oldest first, as `db.workers.health_history` returns them). Empty when no round was observed."""
    spot = [p.name for p in spec.pools if p.spot]
    if not spot or not snapshots:
        return {}
    times = np.asarray([s[0] for s in snapshots])
    first = np.concatenate([[True], np.diff(times) > ROUND_GAP_S])
    round_of = np.cumsum(first) - 1
    ends = np.maximum.reduceat(times, np.flatnonzero(first))  # a round is known once its last answer is in
    out = {}
    for pool in spot:
        up: list[set[str]] = [set() for _ in range(len(ends))]
        for (_, worker, p, healthy), r in zip(snapshots, round_of, strict=True):
            if p == pool and healthy:
                up[r].add(worker)
        counts = np.asarray([len(u) for u in up], dtype=np.int64)
        at = np.concatenate([[min(start_s, ends[0])], ends])
        out[pool] = AvailabilityTrace.from_counts(pool, at, np.concatenate([[counts[0]], counts]), max(end_s, at[-1]))
    return out
