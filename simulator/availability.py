"""GPU availability for a simulation: spot traces (workloads.availability) turned into per-GPU changes.

A trace says how many instances of a pool are up over time. With k up, the pool's GPUs 0 … k−1 are up (capped at
the pool's size): when the count falls, the highest-numbered GPUs leave first, and they come back in order. The
fleet starts with every GPU up, so GPUs beyond the trace's count at its start leave at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
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


@dataclass(frozen=True)
class SpotReplay:
    """What a simulation replays of a fleet's spot traces: the per-GPU changes it applies, and each spot pool's trace
    on the simulation clock (`on_clock`), which a forecasting planner reads up to now and an oracle whole."""

    changes: list[AvailabilityChange]
    on_clock: dict[str, AvailabilityTrace]


def spot_replay(fleet: FleetSpec, fleet_dir: str | Path, *, offset_s: float = 0.0,
                start_s: float = 0.0) -> SpotReplay:
    """Every pool that names an `availability_trace` (a path relative to the fleet file), replayed from trace time
    `offset_s` at simulation time `start_s`. An offset at or past a trace's end is an error naming `offset_s`."""
    traces = {p.name: (Path(fleet_dir) / p.availability_trace, f"pool {p.name}: availability_trace")
              for p in fleet.pools if p.availability_trace}
    return replay_pools(fleet, traces, offset_s=offset_s, start_s=start_s)


def replay_pools(fleet: FleetSpec, traces: Mapping[str, tuple[str | Path, str]], *, offset_s: float,
                 start_s: float) -> SpotReplay:
    """The pools of `traces` (pool name → (trace path, the setting that named it, for errors)) replayed from trace
    time `offset_s` at simulation time `start_s`. An offset at or past a trace's end is an error naming `offset_s`."""
    changes: list[AvailabilityChange] = []
    on_clock: dict[str, AvailabilityTrace] = {}
    for name, (path, where) in traces.items():
        pool = fleet.pool(name)
        trace = read_trace_for(path, where=where)
        if not 0 <= offset_s < trace.duration_s:
            raise InputError("offset_s", offset_s, f"a trace time from 0 to before the end of pool {pool.name}'s "
                             f"trace {trace.name} ({trace.duration_s:g} s)")
        changes += availability_changes(trace, pool, start_s=start_s, offset_s=offset_s)
        on_clock[pool.name] = on_simulation_clock(trace, offset_s=offset_s, start_s=start_s)
    return SpotReplay(sorted(changes, key=lambda c: (c.time_s, c.gpu_id)), on_clock)


def read_pool_trace(pool: PoolSpec, fleet_dir: str | Path) -> AvailabilityTrace:
    """The availability trace `pool` names (relative to the fleet file); an error names the pool and the file."""
    assert pool.availability_trace is not None
    return read_trace_for(Path(fleet_dir) / pool.availability_trace, where=f"pool {pool.name}: availability_trace")


def read_trace_for(path: str | Path, *, where: str) -> AvailabilityTrace:
    """`read_availability(path)`, an error named after the setting `where` that gave the path, with the file (and
    line) in its problem."""
    try:
        return read_availability(path)
    except InputError as exc:
        at = str(path) if exc.where == "trace" else exc.where  # the reader's own place: a line of the file
        raise InputError(where, str(path), exc.allowed, problem=f"{at}: {exc.problem}") from None


def on_simulation_clock(trace: AvailabilityTrace, *, offset_s: float, start_s: float) -> AvailabilityTrace:
    """`trace` from trace time `offset_s` on, moved so that `offset_s` falls at simulation time `start_s`. The count
    at the offset holds from time 0 (nothing is known of the pool before the replay starts, and a forecaster
    reading zeros there would take the pool for empty)."""
    later = trace.time_s > offset_s
    level = int(trace.count_at(offset_s))
    shift = start_s - offset_s
    nodes = ((),) + tuple(n for n, k in zip(trace.node_ids, later, strict=True) if k) if trace.node_ids else ()
    times = np.concatenate([[0.0], trace.time_s[later] + shift])
    deltas = np.concatenate([[level], trace.delta[later]]).astype(np.int64)
    keep = deltas != 0  # a pool that starts empty has no first event
    return AvailabilityTrace(trace.name, times[keep], deltas[keep], trace.duration_s + shift,
                             tuple(n for n, k in zip(nodes, keep, strict=True) if k) if nodes else ())
