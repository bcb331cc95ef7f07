"""The event kernel: time order, priority and insertion order break ties, handlers return events, no time travel."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from simulator.kernel import Kernel, Priority, SimClock


@dataclass
class Note:
    time_s: float
    log: list
    name: str
    priority: int = Priority.ITERATION
    then: list = field(default_factory=list)

    def handle(self):
        self.log.append((self.time_s, self.name))
        return self.then


def test_events_run_by_time_then_priority_then_insertion() -> None:
    k, log = Kernel(), []
    k.schedule(Note(2.0, log, "late"))
    k.schedule(Note(1.0, log, "work", Priority.ITERATION))
    k.schedule(Note(1.0, log, "arrival", Priority.ARRIVAL))
    k.schedule(Note(1.0, log, "work-2", Priority.ITERATION))
    k.run()
    assert log == [(1.0, "arrival"), (1.0, "work"), (1.0, "work-2"), (2.0, "late")]
    assert k.now_s == 2.0 and k.num_events == 4


def test_handlers_return_the_events_they_cause_and_cannot_go_back_in_time() -> None:
    k, log = Kernel(), []
    k.schedule(Note(1.0, log, "a", then=[Note(1.5, log, "b"), Note(3.0, log, "c")]))
    k.run(until_s=2.0)
    assert log == [(1.0, "a"), (1.5, "b")] and k.now_s == 2.0 and k.peek_time() == 3.0
    with pytest.raises(ValueError, match="before now"):
        k.schedule(Note(1.0, log, "past"))
    k.schedule(Note(4.0, log, "bad", then=[Note(3.5, log, "earlier")]))
    with pytest.raises(ValueError, match="before now"):
        k.run()


def test_the_simulated_clock_advances_by_running_events() -> None:
    k, log = Kernel(start_s=10.0), []
    clock = SimClock(k)
    k.schedule(Note(11.0, log, "a"))
    k.schedule(Note(13.0, log, "b"))
    assert clock.now() == 10.0
    clock.sleep_until(12.0)
    assert clock.now() == 12.0 and log == [(11.0, "a")]
    clock.sleep_until(5.0)  # already past: returns at once
    assert clock.now() == 12.0
