import numpy as np
import pytest

from core.fleet import load_fleet
from core.state import EventKind, FleetEvent, FleetState, RunningRequest
from optimizers.fleetwise import FleetwisePlanner
from optimizers.placement.problem import available_by_interval, build_problem, demand_by_interval
from optimizers.placement.solve import solver_available
from optimizers.spot import plan_spot_pools, residual_problem
from tests.factories import EXAMPLES
from tests.optimizers.conftest import scenario_set

pytestmark = pytest.mark.skipif(not solver_available(), reason="HiGHS (highspy) is not installed")
SPOT = "v100-spot"


@pytest.fixture(scope="module")
def fleet():
    return load_fleet(EXAMPLES / "spot-mixed.yaml")


def _scenarios(fleet, spot_available, *, rate=(4.0, 30.0, 20.0), intervals=4):
    """Constant demand per model; the spot pool's availability per scenario (constant over the intervals)."""
    s = len(spot_available)
    demand = np.repeat(np.tile(np.asarray(rate), (s, 1))[:, :, None], intervals, axis=2)
    avail = np.array([[[4] * intervals, [a] * intervals] for a in spot_available], float)
    share = np.array([[0.6, 0.4], [0.6, 0.4], [0.3, 0.7]])
    return scenario_set(fleet, demand, available=avail, interval_s=60.0, share=share)


def _spot_counts(plan) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for r in plan.replicas:
        if r.pool == SPOT and r.residency == "active":
            out[(r.model, r.tp)] = out.get((r.model, r.tp), 0) + 1
    return out


def test_spot_replicas_are_the_first_step_of_liveput_and_stay_put_next_interval(fleet) -> None:
    sc = _scenarios(fleet, [32, 28, 20])
    problem = build_problem(fleet, sc)
    steps = plan_spot_pools(problem, demand_by_interval(fleet, sc), available_by_interval(problem.pools, sc), 60.0, {})
    expected = {(c.model, c.tp): int(steps[0].counts[c.index]) for c in problem.configs if steps[0].counts[c.index]}
    planner = FleetwisePlanner()
    plan = planner.plan(fleet, FleetState(time_s=0.0, workers=()), sc, budget_s=2.0)
    assert _spot_counts(plan) == expected and expected
    assert any(r.startswith(f"liveput on {SPOT}") for r in plan.reasons)
    spot_acts = [a for a in plan.actions if a.kind == "activate_model" and a.worker_id.startswith(SPOT)]
    assert spot_acts and all("liveput" in a.reason for a in spot_acts)
    nxt = planner.plan(fleet, FleetState(time_s=60.0, workers=(), current_plan=plan), sc, budget_s=2.0)
    assert _spot_counts(nxt) == expected  # receding horizon: replanned, and nothing worth a migration changed
    assert not [a for a in nxt.actions if a.kind in ("activate_model", "deactivate_model")]


def test_on_demand_covers_what_spot_is_not_expected_to_serve(fleet) -> None:
    sc = _scenarios(fleet, [32, 6])  # the spot pool survives whole in one scenario, nearly vanishes in the other
    problem = build_problem(fleet, sc)
    steps = plan_spot_pools(problem, demand_by_interval(fleet, sc), available_by_interval(problem.pools, sc), 60.0, {})
    step = steps[0]
    served = step.online_rps.sum(axis=1)
    assert served[0] > served[1] > 0  # fewer surviving spot replicas serve less
    rest = residual_problem(problem, steps)
    assert rest.pools[step.pool_index].num_gpus == 0  # spot replicas come from liveput only
    left = rest.online_demand().sum(axis=1)
    assert np.all(left <= problem.online_demand().sum(axis=1) + 1e-9)
    assert left[1] > left[0]  # the scenario that loses its spot GPUs leaves more for on-demand backup


def test_preemption_notice_pauses_offline_work_first_and_moves_it(fleet) -> None:
    sc = _scenarios(fleet, [32, 28, 24])
    planner = FleetwisePlanner()
    plan = planner.plan(fleet, FleetState(time_s=0.0, workers=()), sc, budget_s=2.0)
    victim = next(r for r in plan.replicas if r.pool == SPOT and r.model == "llama-1b")
    gone = victim.gpu_ids[0]
    work = (RunningRequest(7, victim.replica_id, "llama-1b", "batch", 500, 40, 1.0),
            RunningRequest(8, victim.replica_id, "llama-1b", "interactive", 300, 10, 2.0))
    state = FleetState(time_s=60.0, workers=(), current_plan=plan, running=work,
                       events=(FleetEvent(EventKind.PREEMPTION_NOTICE, 60.0, worker_id=gone),))
    nxt = planner.plan(fleet, state, sc, budget_s=2.0)
    first = nxt.actions[0]
    assert first.kind == "preempt_offline" and first.args.replica_id == victim.replica_id and not first.depends_on
    move = next(a for a in nxt.actions if a.kind == "migrate_requests")
    assert move.args.request_ids == (7,) and first.seq in move.depends_on
    assert move.args.to_replica_id in {r.replica_id for r in nxt.replicas if r.model == "llama-1b"}
    assert all(gone not in r.gpu_ids for r in nxt.replicas)
    assert any(a.kind == "deactivate_model" and a.args.replica_id == victim.replica_id for a in nxt.actions)


def test_on_demand_base_counts_replicas_riding_on_gpus_held_for_others(fleet) -> None:
    from optimizers.plan import RunningReplica
    from optimizers.spot import on_demand_base

    problem = build_problem(fleet, _scenarios(fleet, [32]))
    m = {md.name: i for i, md in enumerate(problem.models)}
    assert not any(problem.pools[c.pool_index].spot and c.online_rate_max > 0
                   for c in problem.configs_of_model(m["qwen-14b"]))  # 14B does not serve from a 16 GB V100
    rep = lambda rid, model, pool, gpus, mem: RunningReplica(rid, model, pool, "A100-80GB", 1, gpus, 10.0, mem)
    replicas = [rep("q", "qwen-14b", "a100", ("a0",), 40.0), rep("s1", "llama-1b", "a100", ("a0",), 12.0),
                rep("t3", "llama-3b", "a100", ("a1",), 20.0), rep("t1", "llama-1b", "a100", ("a1",), 12.0),
                rep("alone", "llama-3b", "a100", ("a2",), 20.0), rep("v", "llama-3b", SPOT, ("v0",), 14.0)]
    base = on_demand_base(problem, replicas)
    config = {c.model: c for c in problem.configs if problem.pools[c.pool_index].name == "a100" and c.tp == 1}
    one_b = config["llama-1b"]
    # llama-1b beside qwen (a GPU qwen pins) and beside llama-3b (the GPU's tenant): both count
    assert base.online_rps[m["llama-1b"]] == pytest.approx(2 * one_b.online.rate_at(10.0))
    assert base.offline_rps[m["llama-1b"]] == pytest.approx(2 * one_b.offline_rate_per_s)
    # llama-3b is the tenant of a1 and alone on a2: what a spot replica would replace; spot replicas never count
    assert base.online_rps[m["llama-3b"]] == 0 and base.online_rps[m["qwen-14b"]] == 0
    assert on_demand_base(problem, replicas[2:3] + replicas[4:]) is None


def test_no_spot_replica_for_a_model_the_held_on_demand_gpus_serve(fleet) -> None:
    """llama-1b beside qwen-14b on an on-demand A100 covers its demand: liveput leaves it there."""
    from optimizers.spot import OnDemandBase

    sc = _scenarios(fleet, [32, 28], rate=(4.0, 30.0, 2.0))
    problem = build_problem(fleet, sc)
    args = (problem, demand_by_interval(fleet, sc), available_by_interval(problem.pools, sc), 60.0, {})
    m = [md.name for md in problem.models].index("llama-1b")

    def spot_1b(steps):
        return sum(int(steps[0].counts[c.index]) for c in problem.configs_of_model(m))

    assert spot_1b(plan_spot_pools(*args)) >= 1
    online, offline = np.zeros(len(problem.models)), np.zeros(len(problem.models))
    online[m], offline[m] = 20.0, 20.0
    steps = plan_spot_pools(*args, base=OnDemandBase(online, offline))
    assert spot_1b(steps) == 0 and steps[0].online_rps[:, m].sum() == 0  # nothing left to serve, no residual cut
    assert spot_1b(plan_spot_pools(*args, policy="reactive", base=OnDemandBase(online, offline))) >= 1


def test_the_harvest_rate_is_what_half_the_tpot_holds_and_off_it_is_the_offline_rate(fleet) -> None:
    from optimizers.placement.problem import PlacementSettings

    sc = _scenarios(fleet, [32])
    harvested = build_problem(fleet, sc)
    whole = build_problem(fleet, sc, settings=PlacementSettings(harvest_fraction=None))
    # Within half the TPOT target a replica serves at most its throughput; where decode time binds before the
    # compute does (qwen-14b on one A100: 3.23 req/s offline alone), less.
    assert all(0 < c.harvest_rate_per_s <= c.offline_rate_per_s for c in harvested.configs)
    qwen = next(c for c in harvested.configs if c.model == "qwen-14b" and c.tp == 1)
    assert qwen.harvest_rate_per_s < 0.8 * qwen.offline_rate_per_s
    assert all(c.harvest_rate_per_s == c.offline_rate_per_s for c in whole.configs)
