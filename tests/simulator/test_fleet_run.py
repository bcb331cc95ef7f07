"""End-to-end runs of FleetSimulation with the static planner: every request ends, invariants hold."""

from __future__ import annotations

import numpy as np

from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from simulator.planners import StaticPlanner
from tests.factories import make_table
from tests.simulator.conftest import small_fleet


def test_a_static_run_serves_every_request_with_invariants_checked_each_iteration() -> None:
    fleet = small_fleet()
    t = make_table(300, rate_per_s=20.0, seed=3)
    res = FleetSimulation(fleet, t, StaticPlanner(), config=SimConfig(check_invariants=True)).run()
    f = res.figures()
    assert f["requests"] == {"total": 300, "completed": 300, "dropped": 0}
    assert 0.9 <= f["slo_attainment"] <= 1.0
    assert f["actions"] == {"activate_model": 2, "set_routing": 1}
    assert np.all(res.finish_s >= res.first_token_s) and np.all(res.first_token_s >= t.arrival_s)
