"""The fleet simulation's events. Each is small: it names the moment and the handler on the simulation, and
returns the events that follow (SimPy / Vidur style). Worker-internal events (iterations, activations) live in
simulator.worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.kernel import Priority

if TYPE_CHECKING:
    from simulator.fleet import FleetSimulation


class Arrival:
    """Row `row` of the trace arrives; the next row's arrival follows (arrivals are streamed, one in the heap)."""

    __slots__ = ("row", "sim", "time_s")
    priority = Priority.ARRIVAL

    def __init__(self, time_s: float, sim: FleetSimulation, row: int) -> None:
        self.time_s, self.sim, self.row = time_s, sim, row

    def handle(self) -> Arrival | None:
        return self.sim.arrive(self.row)


@dataclass(slots=True)
class ActionDone:
    """An action's duration has elapsed: its dependents may start."""

    time_s: float
    sim: FleetSimulation
    plan_id: str
    seq: int
    priority: int = Priority.COMPLETION

    def handle(self) -> None:
        self.sim.runner.complete(self.plan_id, self.seq)


@dataclass(slots=True)
class Replan:
    """Call the planner: the periodic tick (`periodic`) or an event it subscribes to."""

    time_s: float
    sim: FleetSimulation
    periodic: bool
    priority: int = Priority.REPLAN

    def handle(self) -> Replan | None:
        return self.sim.replan(self)


@dataclass(slots=True)
class Monitor:
    """Check queues for planner events and the router for timeouts."""

    time_s: float
    sim: FleetSimulation
    priority: int = Priority.MONITOR

    def handle(self) -> Monitor | None:
        return self.sim.monitor()


@dataclass(slots=True)
class Availability:
    """A GPU appears (`up`), disappears, or announces that it will (`notice`)."""

    time_s: float
    sim: FleetSimulation
    gpu_id: str
    up: bool
    notice: bool = False
    priority: int = Priority.AVAILABILITY

    def handle(self) -> None:
        self.sim.availability(self.gpu_id, self.up, self.notice)


@dataclass(slots=True)
class EndOfRun:
    """The drain timeout after the last arrival: whatever is still in flight is dropped with a reason."""

    time_s: float
    sim: FleetSimulation
    priority: int = Priority.REPLAN

    def handle(self) -> None:
        self.sim.end_of_run()
