import numpy as np
import pytest

from core.fleet import load_fleet
from core.state import EventKind, FleetEvent, FleetState, RunningRequest
from optimizers.fleetwise import FleetwisePlanner
from optimizers.placement.problem import available_by_interval, build_problem, demand_by_interval
from optimizers.placement.solve import solver_available
from optimizers.spot import plan_spot_pools, residual_problem, spot_alternatives
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


def _kept_tier(plan) -> tuple[str, dict[str, float]]:
    """The spot tier a full placement kept and every tier's total, from the plan's reasons."""
    line = next(r for r in plan.reasons if r.startswith("spot tier chosen with the on-demand placement: "))
    totals, kept = {}, None
    for part in line.split(": ", 1)[1].split(" (expected cost")[0].split("; "):
        name, usd = part.split()[:2]
        totals[name] = float(usd)
        kept = name if part.endswith("(kept)") else kept
    return kept, totals


def test_the_spot_tier_is_chosen_with_the_on_demand_placement_and_stays_put_next_interval(fleet) -> None:
    sc = _scenarios(fleet, [32, 28, 20])
    problem = build_problem(fleet, sc)
    tiers = spot_alternatives(problem, demand_by_interval(fleet, sc), available_by_interval(problem.pools, sc),
                              60.0, {})
    assert [t[0].source for t in tiers] == ["liveput", "current", "reactive"]  # nothing runs: "current" is no spot
    assert not tiers[1][0].counts.any() and tiers[0][0].counts.any()
    planner = FleetwisePlanner()
    plan = planner.plan(fleet, FleetState(time_s=0.0, workers=()), sc, budget_s=2.0)
    kept, totals = _kept_tier(plan)
    assert set(totals) == {"liveput", "current", "reactive"} and totals[kept] == min(totals.values())
    chosen = next(t[0] for t in tiers if t[0].source == kept)
    expected = {(c.model, c.tp): int(chosen.counts[c.index]) for c in problem.configs if chosen.counts[c.index]}
    assert _spot_counts(plan) == expected and expected
    spot_acts = [a for a in plan.actions if a.kind == "activate_model" and a.worker_id.startswith(SPOT)]
    assert spot_acts and all("spot pool" in a.reason for a in spot_acts)
    nxt = planner.plan(fleet, FleetState(time_s=60.0, workers=(), current_plan=plan), sc, budget_s=2.0)
    assert _spot_counts(nxt) == expected  # receding horizon: replanned, and nothing worth a migration changed
    assert not [a for a in nxt.actions if a.kind in ("activate_model", "deactivate_model")]
    assert any(r.startswith("spot tier kept: with the on-demand tier as placed") for r in nxt.reasons)


def test_a_spot_replica_is_worth_the_on_demand_capacity_it_saves() -> None:
    """The demo's first plan: four spot L4s, chat-8b at 1.47 req/s needs three of them (0.61 req/s each within
    SLO) or an A100. Liveput alone, valuing replicas by the requests they serve, gives a spot GPU to chat-1b (which
    rides for free beside chat-3b-1 on an on-demand L4) and leaves chat-8b's rest to an A100; chosen with the
    placement, chat-8b takes three spot GPUs and no A100 is bought."""
    from controller.demo.run import DEMO_FLEET
    from controller.demo.spot import SPOT_POOL, with_spot_pool

    demo = with_spot_pool(load_fleet(DEMO_FLEET))
    rates = {"chat-8b": 1.47, "chat-3b-0": 0.82, "chat-3b-1": 0.47, "chat-1b": 0.97, "tiny-2l": 0.22, "tiny-4l": 0.2}
    demand = np.array([[rates[m] for m in demo.model_names]])
    share = np.array([[1.0, 0.0, 0.0]] * len(rates))
    sc = scenario_set(demo, np.repeat(demand[:, :, None], 5, axis=2), interval_s=60.0, share=share)
    problem = build_problem(demo, sc)
    liveput = plan_spot_pools(problem, demand_by_interval(demo, sc), available_by_interval(problem.pools, sc), 60.0,
                              {})[0]
    on_spot = lambda counts: {c.model: int(counts[c.index]) for c in problem.configs if counts[c.index]}
    assert on_spot(liveput.counts).get("chat-1b") == 1 and on_spot(liveput.counts)["chat-8b"] < 3
    plan = FleetwisePlanner().plan(demo, FleetState(time_s=0.0, workers=()), sc, budget_s=2.0)
    spot = [r.model for r in plan.replicas if r.pool == SPOT_POOL]
    assert spot.count("chat-8b") == 3 and "chat-1b" not in spot
    assert not any(r.pool == "a100" for r in plan.replicas)
    kept, totals = _kept_tier(plan)
    assert kept != "liveput" and totals[kept] < totals["liveput"]


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


def test_a_noticed_gpu_stays_out_of_later_plans_until_it_leaves(fleet) -> None:
    """A notice is an event of one plan's state; the GPU still answers until the provider takes it, and a replan in
    between (a cron tick, another event) must not place anything there either."""
    sc = _scenarios(fleet, [32, 28, 24])
    planner = FleetwisePlanner(notice_expiry_s=120.0)
    plan = planner.plan(fleet, FleetState(time_s=0.0, workers=()), sc, budget_s=2.0)
    gone = next(r for r in plan.replicas if r.pool == SPOT).gpu_ids[0]
    notice = FleetEvent(EventKind.PREEMPTION_NOTICE, 60.0, worker_id=gone)
    plan = planner.plan(fleet, FleetState(time_s=60.0, workers=(), current_plan=plan, events=(notice,)), sc, 2.0)
    assert all(gone not in r.gpu_ids for r in plan.replicas)
    later = planner.plan(fleet, FleetState(time_s=75.0, workers=(), current_plan=plan), sc, budget_s=2.0)
    assert all(gone not in r.gpu_ids for r in later.replicas) and planner._notices == {gone: 60.0}
    removed = FleetEvent(EventKind.GPU_REMOVED, 90.0, worker_id=gone)
    planner.plan(fleet, FleetState(time_s=90.0, workers=(), current_plan=later, events=(removed,)), sc, 2.0)
    assert planner._notices == {}  # it left: nothing to remember
    again = FleetEvent(EventKind.PREEMPTION_NOTICE, 100.0, worker_id=gone)
    planner.plan(fleet, FleetState(time_s=100.0, workers=(), current_plan=later, events=(again,)), sc, 2.0)
    planner.plan(fleet, FleetState(time_s=200.0, workers=(), current_plan=later), sc, 2.0)
    assert planner._notices == {gone: 100.0}
    planner.plan(fleet, FleetState(time_s=230.0, workers=(), current_plan=later), sc, 2.0)
    assert planner._notices == {}  # still up 130 s after its notice: the provider kept it


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


def test_a_new_spot_replica_that_waits_for_a_drained_gpu_pays_for_the_wait() -> None:
    """One GPU up, running m0: moving it to m1 leaves m1 waiting for m0's replica to drain (its demand, capped at a
    replica's capacity, unserved for drain_s); with a free GPU nothing waits."""
    from optimizers.liveput import LiveputInput, SpotModel
    from optimizers.spot import drain_usd

    models = tuple(SpotModel(f"m{i}", (1,), (2.0,), (4.0,), (5.0,)) for i in range(2))
    demand = np.array([[[3.0], [0.5]]])  # (S, M, T) req/s
    inp = LiveputInput(1, 60.0, models, np.ones(1), np.ones((1, 1)), demand, np.zeros_like(demand),
                       online_usd_per_request=0.02)
    assert drain_usd(inp, ((1, 1), (1, 0)), ((1, 0), (1, 1)), 20.0) == pytest.approx(0.5 * 0.02 * 20.0)
    assert drain_usd(inp, ((1, 1), (1, 0)), ((1, 1), (1, 0)), 20.0) == 0.0  # nothing new
    two = LiveputInput(2, 60.0, models, np.ones(1), np.full((1, 1), 2.0), demand, np.zeros_like(demand),
                       online_usd_per_request=0.02)
    assert drain_usd(two, ((1, 1), (1, 0)), ((1, 1), (1, 1)), 20.0) == 0.0  # the second GPU is free
    # m0 at 3 req/s over one new replica of capacity 2: the wait loses at most the replica's capacity
    assert drain_usd(inp, ((1, 0), (1, 1)), ((1, 1), (1, 0)), 20.0) == pytest.approx(2.0 * 0.02 * 20.0)
