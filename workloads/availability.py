"""Spot-instance availability traces: GPU (instance) add/remove events of one pool over time.

Readers for the public traces (see the traces README):

- Parcae AWS p3 (`p3trace.csv`) and SpotServe g4dn (`g4dn.csv`): CSV rows `t_ms,add|remove,node_id`;
- Parcae's node counts (`p3_node_count.csv`): CSV rows `t_ms,running_node_count`;
- SpotServe replay segments (`trace_seg/*.txt`): JSON lines `[t_ms, "add"|"remove"|"other"|"DONE", {"nodes": […]}]`
  ("other" changes the workload, not the nodes; "DONE" ends the segment);
- SkyPilot spot traces (`*.json`): `{"metadata": {"gap_seconds": g}, "data": [count, …]}`, instances available at
  each tick.

`read_availability(path)` picks the reader from the file. Every reader returns an `AvailabilityTrace`; malformed
input raises `InputError` naming the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError


@dataclass(frozen=True, eq=False)
class AvailabilityTrace:
    """Instances of one pool joining and leaving. Read-only by convention.

    `time_s[i]` (non-decreasing, seconds from the trace start) changes the instance count by `delta[i]` (+k joins,
    -k leaves); events at the same time apply together. `node_ids[i]` names the instances of event i when the
    trace says (empty otherwise). The count before the first event is 0.
    """

    name: str
    time_s: np.ndarray  # (E,) float64
    delta: np.ndarray  # (E,) int64, never 0
    duration_s: float  # end of the observation window (≥ the last event)
    node_ids: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.time_s.shape != self.delta.shape:
            raise ValueError("time_s and delta must have the same shape")
        if self.time_s.size and np.any(np.diff(self.time_s) < 0):
            raise ValueError("events must be sorted by time")

    @property
    def num_events(self) -> int:
        return int(self.time_s.size)

    @property
    def max_count(self) -> int:
        """Most instances ever up at once (a proxy for the pool's target size when none is given)."""
        return int(np.max(np.cumsum(self.delta), initial=0))

    def count_at(self, times_s: np.ndarray | float) -> np.ndarray:
        """Instances up at each time, counting every event at or before it."""
        level = np.concatenate([[0], np.cumsum(self.delta)])
        return level[np.searchsorted(self.time_s, np.asarray(times_s, dtype=np.float64), side="right")]

    def counts(self, interval_s: float, *, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
        """Counts sampled every `interval_s` from `start_s` up to and including `end_s` (default: the duration)."""
        if interval_s <= 0:
            raise InputError("interval_s", interval_s, "a positive number of seconds")
        end = self.duration_s if end_s is None else end_s
        grid = start_s + interval_s * np.arange(int(np.floor((end - start_s) / interval_s + 1e-9)) + 1)
        return self.count_at(grid)

    def removals(self) -> np.ndarray:
        """(R,) times of instance removals, one entry per instance removed."""
        out = self.delta < 0
        return np.repeat(self.time_s[out], -self.delta[out])

    def node_seconds(self, start_s: float = 0.0, end_s: float | None = None) -> float:
        """Instance-seconds of exposure in `[start_s, end_s)`: the integral of the count (hazard denominators)."""
        end = self.duration_s if end_s is None else end_s
        cuts = np.unique(np.clip(np.concatenate([[start_s, end], self.time_s]), start_s, end))
        return float(np.sum(self.count_at(cuts[:-1]) * np.diff(cuts)))

    @classmethod
    def from_counts(cls, name: str, times_s: np.ndarray, counts: np.ndarray, duration_s: float) -> AvailabilityTrace:
        """Events from a count observed at `times_s` (each change becomes one event of that size)."""
        counts = np.asarray(counts, dtype=np.int64)
        change = np.diff(counts, prepend=0)
        keep = change != 0
        return cls(name, np.asarray(times_s, dtype=np.float64)[keep], change[keep], float(duration_s))


AVAILABILITY_FORMATS = ("an availability trace: a Parcae or SpotServe CSV (t_ms,add|remove,node rows, or node "
                        "counts), a SpotServe segment .txt or a SkyPilot .json")


def or_availability(exc: InputError) -> InputError:
    """A request-trace format error, for a command that also reads availability traces: the same error, with
    availability traces among what is allowed."""
    return InputError(exc.where, exc.value, f"{exc.allowed}; or {AVAILABILITY_FORMATS}", source=exc.source,
                      problem=exc.problem)


def is_availability_trace(path: str | Path) -> bool:
    """Whether `path` looks like an availability trace rather than a request trace: a SpotServe segment (.txt),
    a SkyPilot document (.json with "metadata" and "data"), or a headerless CSV of events or node counts."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix == ".txt":
        return True
    if p.suffix == ".json":
        try:
            doc = json.loads(p.read_text())
        except ValueError:
            return False
        return isinstance(doc, dict) and {"metadata", "data"} <= set(doc)
    if p.suffix == ".csv":
        with p.open(newline="") as fh:
            first = next(csv.reader(fh), [])
        cells = [c.strip() for c in first]
        if len(cells) == 3:
            return cells[1] in ("add", "remove")
        return len(cells) == 2 and all(c.replace(".", "", 1).isdigit() for c in cells)
    return False


def read_availability(path: str | Path) -> AvailabilityTrace:
    """Read any supported trace, choosing the reader by extension (.json SkyPilot, .txt SpotServe segment) and,
    for CSV, by its columns (event rows or node counts)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("trace", str(p), "an existing availability trace file (.csv, .txt or .json)",
                         problem="no such file")
    if p.suffix == ".json":
        return read_skypilot(p)
    if p.suffix == ".txt":
        return read_spotserve_segment(p)
    if p.suffix == ".csv":
        return read_event_csv(p)
    raise InputError("trace", p.name, "a .csv (event rows or node counts), .txt (SpotServe segment) or .json "
                     "(SkyPilot) trace", problem="unknown trace format")


def read_event_csv(path: str | Path) -> AvailabilityTrace:
    """Parcae p3 / SpotServe g4dn event CSV (`t_ms,add|remove,node_id`), or Parcae's `t_ms,running_node_count`."""
    p = Path(path)
    with p.open(newline="") as fh:
        rows = [(i + 1, r) for i, r in enumerate(csv.reader(fh)) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(p.name, "empty file", "rows of t_ms,add|remove,node_id", problem="no events")
    if len(rows[0][1]) == 2:
        times, counts = zip(*[(_number(p, line, r[0]), _number(p, line, r[1])) for line, r in rows])
        t = np.asarray(times) / 1000.0
        return AvailabilityTrace.from_counts(p.stem, t, np.asarray(counts, dtype=np.int64), float(t.max()))
    times, deltas, nodes = [], [], []
    for line, r in rows:
        if len(r) != 3 or r[1].strip() not in ("add", "remove"):
            raise InputError(f"{p.name}:{line}", ",".join(r), "t_ms,add|remove,node_id")
        times.append(_number(p, line, r[0]) / 1000.0)
        deltas.append(1 if r[1].strip() == "add" else -1)
        nodes.append((r[2].strip(),))
    return _events(p.stem, times, deltas, nodes, max(times))


def read_spotserve_segment(path: str | Path) -> AvailabilityTrace:
    """SpotServe replay segment: JSON lines `[t_ms, kind, {"nodes": [...]}]`; "DONE" sets the end."""
    p = Path(path)
    times, deltas, nodes, end = [], [], [], None
    for line, text in enumerate(p.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            t_ms, kind, body = json.loads(text)
            ids = tuple(str(n) for n in body.get("nodes", []))
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"{p.name}:{line}", text[:60], '[t_ms, "add"|"remove"|"other"|"DONE", {"nodes": [...]}]',
                             problem=f"unreadable event ({exc.__class__.__name__})") from exc
        if kind == "DONE":
            end = float(t_ms) / 1000.0
        elif kind in ("add", "remove") and ids:
            times.append(float(t_ms) / 1000.0)
            deltas.append(len(ids) if kind == "add" else -len(ids))
            nodes.append(ids)
        elif kind not in ("add", "remove", "other"):
            raise InputError(f"{p.name}:{line}", kind, "an event kind among add, remove, other, DONE")
    if not times:
        raise InputError(p.name, "no add/remove events", "at least one add event", problem="empty segment")
    return _events(p.stem, times, deltas, nodes, end if end is not None else max(times))


def read_skypilot(path: str | Path) -> AvailabilityTrace:
    """SkyPilot spot trace: instance count per tick of `metadata.gap_seconds`."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
        gap = float(doc["metadata"]["gap_seconds"])
        data = np.asarray(doc["data"], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(p.name, "document", '{"metadata": {"gap_seconds": g}, "data": [count, ...]}',
                         problem=f"not a SkyPilot trace ({exc.__class__.__name__}: {exc})") from exc
    if gap <= 0 or data.ndim != 1 or np.any(data < 0):
        raise InputError(p.name, gap if gap <= 0 else "data", "gap_seconds > 0 and a list of counts ≥ 0")
    times = gap * np.arange(data.size)
    return AvailabilityTrace.from_counts(p.stem, times, data, gap * data.size)


def _number(p: Path, line: int, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{p.name}:{line}", text, "a number (milliseconds or a count)") from None


def _events(name: str, times: list[float], deltas: list[int], nodes: list[tuple[str, ...]],
            end_s: float) -> AvailabilityTrace:
    order = np.argsort(np.asarray(times), kind="stable")
    return AvailabilityTrace(
        name, np.asarray(times, dtype=np.float64)[order], np.asarray(deltas, dtype=np.int64)[order],
        float(end_s), tuple(nodes[i] for i in order),
    )
