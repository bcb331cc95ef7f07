"""ClockedSimFleet (the `sim` backend and the demo's GPUs): requests a replica gives back are sent again to another
replica of their model, as the simulator's fleet router does; only a model with no replica left loses them."""

from __future__ import annotations

from collections.abc import Callable

from controller.sim_fleet import ClockedSimFleet
from core.actions import Action, ActivateModel
from core.latency import LatencyBook, LatencyModel
from simulator.fleet import AvailabilityChange
from tests.simulator.conftest import small_fleet
from tests.simulator.test_worker import SIMPLE, request


class SteppedClock:
    """Time that moves only when the test (or a sleeper) says (`core.protocols.Clock`); `at` runs callbacks once the
    time passes theirs."""

    def __init__(self, at: list[tuple[float, Callable[[], object]]] | None = None) -> None:
        self.t = 0.0
        self.at = sorted(at or [], key=lambda a: a[0])

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        while self.at and self.at[0][0] <= t:
            when, call = self.at.pop(0)
            self.t = max(self.t, when)
            call()
        self.t = max(self.t, t)


def two_gpu_sim(clock: SteppedClock, availability: list[AvailabilityChange] | None = None) -> ClockedSimFleet:
    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}])
    book = LatencyBook(profiles={("Llama-3.1-8B", "H100-SXM", 1): LatencyModel(tp=1, **SIMPLE)})
    return ClockedSimFleet(fleet, clock, book=book, availability=availability or [])


def activate_chat(sim: ClockedSimFleet, gpu: str, seq: int = 0) -> None:
    client = next(c for c in sim.clients() if c.worker_id == gpu)
    args = ActivateModel(model="chat", replica_id=f"chat@{gpu}", tp=1, gpu_ids=(gpu,))
    assert client.apply(Action(plan_id="p", seq=seq, worker_id=gpu, args=args, revision=1,
                               reason="test")).status in ("applied", "deferred")


def _fleet_losing_gpu0(active: tuple[str, ...]) -> tuple[ClockedSimFleet, SteppedClock]:
    clock = SteppedClock()
    sim = two_gpu_sim(clock, [AvailabilityChange(6.0, "h100/0", up=False)])
    clients = {c.worker_id: c for c in sim.clients()}
    for i, gpu in enumerate(active):
        activate_chat(sim, gpu, i)
    clock.t = 5.0  # loaded (4 s from disk)
    for i in range(4):
        assert clients["h100/0"].submit(request(i, 5.0, output=400)).status == "accepted"
    clock.t = 200.0  # h100/0 is reclaimed at 6 s, in the middle of decoding
    sim.advance()
    return sim, clock


def test_requests_of_a_reclaimed_gpu_finish_on_another_replica_of_their_model() -> None:
    sim, _ = _fleet_losing_gpu0(("h100/0", "h100/1"))
    done, dropped = sim.take_done()
    assert sorted(s.seq_id for s in done) == [0, 1, 2, 3] and dropped == []
    assert all(s.finish_s > 6.0 and s.num_generated == 400 for s in done)  # decoded to the end after the reclaim


def test_requests_of_a_model_left_without_a_replica_are_dropped_as_no_router() -> None:
    sim, _ = _fleet_losing_gpu0(("h100/0",))
    done, dropped = sim.take_done()
    assert done == [] and [s.drop_reason for s in dropped] == ["no_router"] * 4
