import numpy as np
import pytest

from core.catalog import GIB
from core.fleet import load_fleet
from core.protocols import Planner
from core.state import EventKind, FleetEvent, FleetState
from optimizers.fleetwise import FleetwisePlanner
from optimizers.instances import random_fleet, random_scenarios
from optimizers.placement.solve import solver_available
from tests.factories import EXAMPLES

pytestmark = pytest.mark.skipif(not solver_available(), reason="HiGHS (highspy) is not installed")


@pytest.fixture(scope="module")
def fleet():
    return random_fleet(16, 8, seed=1)


@pytest.fixture(scope="module")
def scenarios(fleet):
    return random_scenarios(fleet, 4, load=0.4, seed=1)


def _check_memory_and_inventory(fleet, plan) -> None:
    used: dict[str, float] = {}
    whole: list[str] = []
    ids = set(fleet.gpu_ids())
    for r in plan.replicas:
        if r.residency != "active":
            continue
        assert set(r.gpu_ids) <= ids
        model = fleet.model(r.model)
        for g in r.gpu_ids:
            used[g] = used.get(g, 0.0) + model.weight_gib / r.tp + r.kv_share_gib
        if r.tp > 1:
            whole += list(r.gpu_ids)
            assert len({fleet.pool_of_gpu(g).node_of(int(g.rsplit("/", 1)[1])) for g in r.gpu_ids}) == 1
    for g, gib in used.items():
        assert gib <= fleet.usable_bytes_per_gpu(fleet.pool_of_gpu(g).gpu) / GIB + 1e-6
    assert len(whole) == len(set(whole))


def test_plan_fits_memory_and_inventory_and_explains_every_action(fleet, scenarios) -> None:
    planner = FleetwisePlanner()
    assert isinstance(planner, Planner)
    plan = planner.plan(fleet, FleetState(time_s=0.0, workers=()), scenarios, budget_s=2.0)
    _check_memory_and_inventory(fleet, plan)
    assert plan.replicas and plan.expected is not None and plan.solver.num_variables > 0
    for a in plan.actions:
        assert a.reason.strip()
        assert all(d < a.seq for d in a.depends_on)
    assert 0 < plan.expected.overall.slo_attainment <= 1
    assert len(plan.expected.scenarios) == scenarios.num_scenarios
    again = FleetwisePlanner().plan(fleet, FleetState(time_s=0.0, workers=()), scenarios, budget_s=2.0)
    assert again.plan_id == plan.plan_id


def test_consecutive_plans_on_a_stationary_workload_move_few_replicas(fleet, scenarios) -> None:
    planner = FleetwisePlanner(placement_interval_s=60)
    plan = planner.plan(fleet, FleetState(time_s=0.0, workers=()), scenarios, budget_s=2.0)
    for t in (120.0, 240.0):
        nxt = planner.plan(fleet, FleetState(time_s=t, workers=(), current_plan=plan), scenarios, budget_s=2.0)
        moved = nxt.action_counts().get("activate_model", 0) + nxt.action_counts().get("deactivate_model", 0)
        assert moved <= 0.05 * len(plan.replicas) + 1e-9, nxt.action_counts()
        plan = nxt


def test_infeasible_demand_gives_a_plan_with_penalties_and_reasons(fleet, scenarios) -> None:
    flood = random_scenarios(fleet, 2, load=20.0, seed=2)
    plan = FleetwisePlanner().plan(fleet, FleetState(time_s=0.0, workers=()), flood, budget_s=2.0)
    _check_memory_and_inventory(fleet, plan)
    assert plan.expected.overall.unmet_requests_per_s > 0
    assert any("exceeds SLO capacity" in r for r in plan.reasons)


def test_replacing_a_replica_is_make_before_break(fleet, scenarios) -> None:
    planner = FleetwisePlanner()
    plan = planner.plan(fleet, FleetState(time_s=0.0, workers=()), scenarios, budget_s=2.0)
    gone = plan.replicas[0].gpu_ids[0]
    healthy = FleetState(time_s=10.0, workers=(), current_plan=plan,
                         events=(FleetEvent(EventKind.GPU_REMOVED, 10.0, worker_id=gone),))
    nxt = planner.plan(fleet, healthy, scenarios, budget_s=2.0)
    by_seq = {a.seq: a for a in nxt.actions}
    for a in nxt.actions:
        if a.kind == "deactivate_model":
            routes = [by_seq[d] for d in a.depends_on]
            assert all(r.kind == "set_routing" and r.args.model == a.args.model for r in routes)


def test_reuses_its_placement_between_intervals_and_on_the_example_fleet() -> None:
    fleet = load_fleet(EXAMPLES / "small-hetero.yaml")
    planner = FleetwisePlanner(placement_interval_s=300)
    sc = random_scenarios(fleet, 3, load=0.3, seed=3)
    first = planner.plan(fleet, FleetState(time_s=0.0, workers=()), sc, budget_s=2.0)
    second = planner.plan(fleet, FleetState(time_s=30.0, workers=(), current_plan=first), sc, budget_s=2.0)
    assert "placement reused" in " ".join(second.reasons)
    assert {r.replica_id for r in second.replicas} == {r.replica_id for r in first.replicas}
    assert second.parent_id == first.plan_id and second.generation == first.generation + 1
    assert np.isclose(sum(first.routing[m][r] for m in first.routing for r in first.routing[m]), len(first.routing))
