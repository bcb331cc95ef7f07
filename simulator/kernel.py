"""The event kernel: a deterministic heap of `(time, priority, seq, event)` and the simulated clock.

Handlers return the events they cause (Vidur / SimPy style); the kernel pushes them. Ties in time break on the
event kind's priority (lower first), then on insertion order, so a seeded run replays exactly. Time never goes
backwards: an event scheduled in the past is an error.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from enum import IntEnum
from typing import Protocol


class Priority(IntEnum):
    """Order of events at the same instant: state changes first, then arrivals, then work, then decisions."""

    AVAILABILITY = 0  # GPUs appear or vanish before anything runs on them
    COMPLETION = 1  # activations, drains and actions that finish now
    ARRIVAL = 2
    ITERATION = 3
    MONITOR = 4
    REPLAN = 5


class Event(Protocol):
    """Something that happens at `time_s`. `handle()` changes the world and returns the events it causes."""

    time_s: float
    priority: int

    def handle(self) -> Iterable[Event] | Event | None: ...


class Kernel:
    """Runs events in time order. Not re-entrant: handlers return events instead of running the kernel."""

    __slots__ = ("_heap", "_seq", "now_s", "num_events")

    def __init__(self, start_s: float = 0.0) -> None:
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = 0
        self.now_s = start_s
        self.num_events = 0

    def schedule(self, event: Event) -> None:
        """Queue an event; it must not lie in the past."""
        if event.time_s < self.now_s:
            raise ValueError(f"event {type(event).__name__} at {event.time_s} is before now ({self.now_s})")
        self._seq += 1
        heapq.heappush(self._heap, (event.time_s, event.priority, self._seq, event))

    def schedule_all(self, events: Iterable[Event] | Event | None) -> None:
        if events is None:
            return
        if isinstance(events, (list, tuple)):
            for e in events:
                self.schedule(e)
        else:
            self.schedule(events)  # type: ignore[arg-type]

    def peek_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def run(self, until_s: float | None = None, *, stop=None) -> None:
        """Handle events in order until the heap is empty, the next event lies after `until_s`, or `stop()` is
        true (checked after each event). `now_s` ends at `until_s` when given and reached."""
        heap, pop, push = self._heap, heapq.heappop, heapq.heappush
        while heap:
            if until_s is not None and heap[0][0] > until_s:
                break
            t, _, _, event = pop(heap)
            self.now_s = t
            self.num_events += 1
            out = event.handle()
            if out is not None:
                for e in (out if isinstance(out, (list, tuple)) else (out,)):
                    if e.time_s < t:
                        raise ValueError(f"event {type(e).__name__} at {e.time_s} is before now ({t})")
                    self._seq += 1
                    push(heap, (e.time_s, e.priority, self._seq, e))
            if stop is not None and stop():
                return
        if until_s is not None and until_s > self.now_s:
            self.now_s = until_s


class SimClock:
    """`core.protocols.Clock` over simulated time: `sleep_until(t)` runs the kernel's events up to `t`."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def now(self) -> float:
        return self.kernel.now_s

    def sleep_until(self, t: float) -> None:
        """Advance simulated time to `t`, handling every event due by then (never call from a handler)."""
        if t > self.kernel.now_s:
            self.kernel.run(until_s=t)
