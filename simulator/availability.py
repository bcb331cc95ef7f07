"""GPU availability for a simulation: spot traces (workloads.availability) turned into per-GPU changes.

A trace says how many instances of a pool are up over time. With k up, the pool's GPUs 0 … k−1 are up (capped at
the pool's size): when the count falls, the highest-numbered GPUs leave first, and they come back in order. The
fleet starts with every GPU up, so GPUs beyond the trace's count at its start leave at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.fleet import FleetSpec, PoolSpec
from simulator.fleet import AvailabilityChange
from workloads.availability import AvailabilityTrace, read_availability


def availability_changes(trace: AvailabilityTrace, pool: PoolSpec, *, start_s: float = 0.0,
                         offset_s: float = 0.0) -> list[AvailabilityChange]:
    """Per-GPU changes of `pool` following `trace`; trace time `offset_s` is simulation time `start_s`."""
    times = np.concatenate([[offset_s], trace.time_s[trace.time_s > offset_s]])
    counts = np.minimum(trace.count_at(times), pool.count)
    ids = pool.gpu_ids()
    changes: list[AvailabilityChange] = []
    level = pool.count
    for t, count in zip(times, counts):
        at = start_s + float(t - offset_s)
        count = int(count)
        changes += [AvailabilityChange(at, ids[i], False) for i in range(level - 1, count - 1, -1)]
        changes += [AvailabilityChange(at, ids[i], True) for i in range(level, count)]
        level = count
    return changes


def fleet_availability(fleet: FleetSpec, fleet_dir: str | Path, *, start_s: float = 0.0,
                       offset_s: float = 0.0) -> list[AvailabilityChange]:
    """The changes of every pool that names an `availability_trace` (a path relative to the fleet file)."""
    out: list[AvailabilityChange] = []
    for pool in fleet.pools:
        if pool.availability_trace:
            trace = read_availability(Path(fleet_dir) / pool.availability_trace)
            out += availability_changes(trace, pool, start_s=start_s, offset_s=offset_s)
    return sorted(out, key=lambda c: (c.time_s, c.gpu_id))
