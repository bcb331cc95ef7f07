import itertools
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from optimizers.placement.greedy import PlacementDecision
from optimizers.placement.problem import PlacementSettings, build_problem, survival_probability
from optimizers.placement.solve import evaluate, solve_block, solver_available
from tests.factories import make_fleet
from tests.optimizers.conftest import scenario_set

pytestmark = pytest.mark.skipif(not solver_available(), reason="HiGHS (highspy) is not installed")


def _small_problem(demand):
    fleet = make_fleet(
        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 4, "gpus_per_node": 4}],
        models=[{"name": "a", "arch": "Llama-3.1-8B", "tp_options": [1, 2], "max_context_tokens": 8192},
                {"name": "b", "arch": "Llama-3.2-3B", "tp_options": [1], "max_context_tokens": 8192}])
    return build_problem(fleet, scenario_set(fleet, demand), settings=PlacementSettings(time_limit_s=20))


def _brute_force(problem) -> float:
    """Minimum objective over every replica-count vector (each completed exactly by `evaluate`)."""
    ranges = [range(3) for _ in problem.configs]
    best = np.inf
    for counts in itertools.product(*ranges):
        n = np.array(counts)
        gpus = sum(c.tp * n[c.index] for c in problem.configs if not c.shares_gpus)
        if gpus > problem.pools[0].num_gpus:
            continue
        d = PlacementDecision(n, np.zeros(len(n)), np.zeros(1, int), frozenset())
        try:
            best = min(best, evaluate(problem, d, status="enum").objective_usd)
        except RuntimeError:  # these counts cannot fit (e.g. TP groups leave no GPU for shared replicas)
            continue
    return best


def test_solver_matches_exhaustive_enumeration_on_a_small_instance() -> None:
    problem = _small_problem([[20.0, 3.0], [30.0, 1.0], [10.0, 5.0]])
    result = solve_block(problem, time_limit_s=20)
    assert result.objective_usd == pytest.approx(_brute_force(problem), rel=2e-3)


@pytest.mark.parametrize("seed,gpus,models,load", [(5, 6, 3, 0.8), (6, 8, 2, 1.0), (8, 6, 3, 0.8)])
def test_a_small_program_that_rounding_starves_gets_the_full_mip_in_deterministic_solves(seed, gpus, models,
                                                                                        load) -> None:
    """Instances where LP rounding and the LP neighbourhood left online demand unserved that the relaxation serves,
    3-50 % above the optimum: a program this small is rescued by the full MIP (`PlacementSettings.small_mip_integers`,
    `short_of_lp_rps`), deterministic solves included."""
    from optimizers.instances import random_fleet, random_scenarios
    from optimizers.placement.highs import CompiledProgram
    from optimizers.placement.model import build_model
    from optimizers.placement.solve import solve_placement

    fleet = random_fleet(gpus, models, seed=seed)
    problem = build_problem(fleet, random_scenarios(fleet, 4, seed=seed, load=load),
                            settings=PlacementSettings(deterministic=True))
    prog = CompiledProgram(build_model(problem))
    assert prog.integer.sum() <= problem.settings.small_mip_integers
    optimum = prog.solve(time_limit_s=60, mip_gap=1e-6).objective
    without = solve_placement(replace(problem, settings=replace(problem.settings, short_of_lp_rps=np.inf)),
                              time_limit_s=2.0)
    assert without.objective_usd > optimum * (1 + problem.settings.mip_gap)
    result = solve_placement(problem, time_limit_s=2.0)
    assert result.warm_start.endswith("best from mip")
    assert result.objective_usd <= optimum * (1 + problem.settings.mip_gap) + 1e-6


def test_more_demand_than_the_fleet_holds_is_priced_not_infeasible() -> None:
    problem = _small_problem([[500.0, 300.0]])
    result = solve_block(problem, time_limit_s=5)
    assert result.unmet_rps.sum() > 100
    assert result.decision.gpus_used(problem).sum() <= 4
    assert result.objective_usd > 0


def test_tail_models_share_one_gpu() -> None:
    fleet = make_fleet(
        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 4, "gpus_per_node": 4}],
        models=[{"name": "t{i}", "arch": "Llama-3.2-1B", "tp_options": [1], "max_context_tokens": 4096,
                 "copies": 6}])
    problem = build_problem(fleet, scenario_set(fleet, np.full((2, 6), 0.3)))
    result = solve_block(problem, time_limit_s=5)
    assert result.decision.replicas.sum() == 6
    assert result.decision.gpus_used(problem).sum() == 1  # six 1B models multiplexed on one GPU
    assert result.unmet_rps.sum() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("n,k,tp", [(32, 8, 1), (32, 8, 2), (24, 3, 4), (10, 0, 2), (8, 7, 2)])
def test_survival_is_the_hypergeometric_probability_of_no_lost_gpu(n, k, tp) -> None:
    expected = stats.hypergeom(n, k, tp).pmf(0)  # none of the tp GPUs among the k removed
    assert survival_probability(n, k, tp) == pytest.approx(expected)


def test_relaxation_charges_a_served_tail_model_a_whole_replica() -> None:
    """Without the useful-capacity inequality the LP serves 0.3 req/s with 1 % of a replica (and 1 % of its weight
    memory); with it, serving that demand takes a whole replica, as in every integer solution."""
    from optimizers.placement.highs import CompiledProgram
    from optimizers.placement.model import build_model, useful_capacity

    problem = _small_problem([[0.3, 0.0], [0.2, 0.0]])
    assert useful_capacity(problem)[problem.configs_of_model(0)[0].index] == pytest.approx(0.3)
    model = build_model(problem)
    prog = CompiledProgram(model)
    lp = prog.solve(time_limit_s=5, integer=False)
    served = sum(lp.values[prog.index(model.cap[c.index])] for c in problem.configs_of_model(0))
    replicas = sum(lp.values[prog.index(model.n[c.index])] for c in problem.configs_of_model(0))
    assert served == pytest.approx(0.3, rel=1e-3) and replicas == pytest.approx(1.0, rel=1e-3)


def test_grow_only_keeps_what_runs_and_adds_beside_it() -> None:
    """A surge addition (`grow_only`): removing the running replica or taking its KV is priced out, so the program
    keeps both and serves the new demand from what is free; the same problem otherwise reclaims them."""
    from dataclasses import replace

    fleet = make_fleet(
        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 1, "gpus_per_node": 1}],
        models=[{"name": "a", "arch": "Llama-3.1-8B", "tp_options": [1], "max_context_tokens": 8192},
                {"name": "b", "arch": "Llama-3.2-3B", "tp_options": [1], "max_context_tokens": 8192}])
    problem = build_problem(fleet, scenario_set(fleet, [[0.0, 40.0]]), current=[("a", "h100", 1, 40.0)],
                            settings=PlacementSettings(time_limit_s=10))
    a = next(c.index for c in problem.configs if c.model == "a")
    b = next(c.index for c in problem.configs if c.model == "b")
    free = solve_block(problem, time_limit_s=10).decision
    assert free.replicas[a] == 0 or free.kv_gib[a] < 40.0 - 1e-6  # idle: its replica or its KV goes to b
    grown = solve_block(replace(problem, grow_only=True), time_limit_s=10).decision
    assert grown.replicas[a] == 1 and grown.kv_gib[a] >= 40.0 - 1e-6
    assert grown.replicas[b] >= 1  # b is added in the memory a leaves free
