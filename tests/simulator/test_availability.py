"""Spot traces become per-GPU changes; a simulation replays them."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.state import EventKind
from simulator.availability import availability_changes, on_simulation_clock, spot_replay
from simulator.fleet import AvailabilityChange, FleetSimulation
from simulator.planners import StaticPlanner
from tests.factories import make_table
from tests.simulator.conftest import small_fleet
from workloads.availability import AvailabilityTrace


def test_the_highest_numbered_gpus_leave_first_and_return_in_order() -> None:
    pool = small_fleet(pools=[{"name": "spot", "gpu": "L4", "count": 4, "gpus_per_node": 1}]).pools[0]
    trace = AvailabilityTrace("t", np.array([0.0, 10.0, 20.0, 30.0]), np.array([3, -2, 5, -3]), 40.0)
    changes = availability_changes(trace, pool, start_s=100.0)
    assert changes == [
        AvailabilityChange(100.0, "spot/3", False),  # 3 up at the start: the fourth leaves at once
        AvailabilityChange(110.0, "spot/2", False), AvailabilityChange(110.0, "spot/1", False),
        AvailabilityChange(120.0, "spot/1", True), AvailabilityChange(120.0, "spot/2", True),
        AvailabilityChange(120.0, "spot/3", True),  # 6 up: capped at the pool's 4
        AvailabilityChange(130.0, "spot/3", False),  # 6 − 3 = 3
    ]


def test_a_fleet_reads_its_pools_traces_and_the_simulation_replays_them(tmp_path) -> None:
    (tmp_path / "spot.csv").write_text("0,add,a\n0,add,b\n5000,remove,b\n")
    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 1, "spot": True,
                                "availability_trace": "spot.csv"}])
    replay = spot_replay(fleet, tmp_path)
    changes = replay.changes
    assert changes == [AvailabilityChange(5.0, "h100/1", False)]
    assert replay.on_clock["h100"].count_at(np.array([0.0, 4.9, 5.0])).tolist() == [2, 2, 1]
    with pytest.raises(InputError, match="offset_s: 5.0 is not allowed; a trace time from 0 to before the end of pool "
                                         r"h100's trace spot \(5 s\)"):
        spot_replay(fleet, tmp_path, offset_s=5.0)
    res = FleetSimulation(fleet, make_table(100, rate_per_s=10.0, seed=1), StaticPlanner(), availability=changes).run()
    assert res.figures()["requests"]["completed"] == 100


def test_a_trace_moved_onto_the_simulation_clock_holds_its_level_from_zero() -> None:
    trace = AvailabilityTrace("t", np.array([0.0, 10.0, 20.0, 30.0]), np.array([3, -2, 5, -3]), 40.0,
                              (("a", "b", "c"), ("b", "c"), ("b", "c", "d", "e", "f"), ("d", "e", "f")))
    moved = on_simulation_clock(trace, offset_s=15.0, start_s=100.0)
    np.testing.assert_array_equal(moved.time_s, [0.0, 105.0, 115.0])
    np.testing.assert_array_equal(moved.delta, [1, 5, -3])
    assert moved.duration_s == 125.0 and moved.node_ids == ((), ("b", "c", "d", "e", "f"), ("d", "e", "f"))
    assert on_simulation_clock(trace, offset_s=0.0, start_s=0.0).count_at(np.array([0.0, 10.0])).tolist() == [3, 1]


class Recorder(StaticPlanner):
    """The static placement, called on GPU events; records what it was told and when."""

    subscriptions = frozenset({EventKind.PREEMPTION_NOTICE, EventKind.GPU_REMOVED})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, str, str]] = []
        self.calls: list[float] = []

    def plan(self, fleet, state, scenarios, budget_s):
        self.calls.append(state.time_s)
        self.seen += [(e.time_s, e.kind.value, e.worker_id) for e in state.events]
        return super().plan(fleet, state, scenarios, budget_s)


@pytest.mark.parametrize("spot", [True, False])
def test_spot_gpus_announce_their_removal_30_s_ahead_by_default(spot: bool) -> None:
    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 1, "spot": spot}])
    planner = Recorder()
    FleetSimulation(fleet, make_table(600, rate_per_s=10.0, seed=1), planner,
                    availability=[AvailabilityChange(50.0, "h100/1", False)]).run()
    notices = [(t, g) for t, kind, g in planner.seen if kind == "preemption_notice"]
    assert notices == ([(20.0, "h100/1")] if spot else [])  # an on-demand GPU that leaves fails without notice
    assert (50.0, "gpu_removed", "h100/1") in planner.seen


def test_replan_events_narrow_what_triggers_a_replan() -> None:
    """A controller that replans on its cron and on preemption notices only: the notice at 20 s replans at once,
    the removal at 50 s waits for the 60 s tick (and is in that plan's events)."""
    from simulator.config import SimConfig

    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 1, "spot": True}])
    planner = Recorder()
    config = SimConfig(replan_interval_s=60.0, replan_events=("preemption_notice",))
    FleetSimulation(fleet, make_table(1200, rate_per_s=10.0, seed=1), planner, config=config,
                    availability=[AvailabilityChange(50.0, "h100/1", False)]).run()
    after_notice = [t for t in planner.calls if t > 20.0]
    assert 20.0 in planner.calls and after_notice and after_notice[0] == pytest.approx(60.0, abs=0.5)
    with pytest.raises(InputError, match="replan_events"):
        SimConfig(replan_events=("gpu_vanished",))
