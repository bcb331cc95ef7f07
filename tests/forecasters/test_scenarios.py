"""Stratified scenario sampling, reduction that keeps mean and tails, and the per-cycle builder."""

from __future__ import annotations

import numpy as np
import pytest

from core.forecast import Forecast, ScenarioSet
from forecasters.builder import BuilderConfig, ScenarioBuilder, build_scenarios
from forecasters.scenarios import (
    ScenarioInputs,
    quantile_path,
    reduce_scenarios,
    sample_scenarios,
    stratified_levels,
    tail_scenarios,
)
from forecasters.series import count_series
from tests.factories import make_fleet, make_table
from workloads.availability import AvailabilityTrace


def forecast(level: float, spread: float, horizon: int = 4, interval_s: float = 60.0) -> Forecast:
    levels = (0.01, 0.1, 0.5, 0.9, 0.99)
    z = {0.01: -2.33, 0.1: -1.28, 0.5: 0.0, 0.9: 1.28, 0.99: 2.33}
    return Forecast(series="m", interval_s=interval_s, start_s=0.0, mean=(level,) * horizon, method="test",
                    quantiles={q: tuple(max(level + z[q] * spread, 0.0) for _ in range(horizon)) for q in levels})


def inputs() -> ScenarioInputs:
    return ScenarioInputs(
        models=("a", "b", "c"), demand=(forecast(600, 120), forecast(60, 30), forecast(6, 6)),
        pools=("on-demand", "spot"), availability=(8.0, forecast(12, 3)), slo_classes=("chat",),
        class_share=np.ones((3, 1)), mean_prompt_tokens=np.full(3, 100.0), mean_output_tokens=np.full(3, 50.0),
    )


def test_latin_hypercube_puts_one_level_in_every_stratum() -> None:
    u = stratified_levels(np.random.default_rng(0), 20, 3)
    for col in u.T:
        assert np.array_equal(np.sort(np.floor(col * 20)), np.arange(20))


def test_quantile_path_interpolates_between_levels() -> None:
    f = forecast(100, 10)
    assert np.allclose(quantile_path(f, np.array([0.5]))[0], 100.0)
    assert np.allclose(quantile_path(f, np.array([0.3]))[0], 100 - 0.5 * 12.8)
    assert np.allclose(quantile_path(f, np.array([0.0001]))[0], 100 - 23.3)  # clamped at the lowest level


def test_sampling_is_seeded_stratified_and_in_requests_per_second() -> None:
    s = sample_scenarios(inputs(), num_scenarios=50, seed=3, start_s=0.0, interval_s=60.0, horizon=4)
    again = sample_scenarios(inputs(), num_scenarios=50, seed=3, start_s=0.0, interval_s=60.0, horizon=4)
    assert isinstance(s, ScenarioSet) and s.num_scenarios == 50
    assert np.array_equal(s.demand_rps, again.demand_rps) and np.array_equal(s.seeds, again.seeds)
    assert np.allclose(s.weights.sum(), 1.0) and len(set(s.seeds)) == 50
    # stratification: with symmetric bands the sample mean sits on the median (model c's bands are clipped at 0)
    assert np.allclose(s.expected_demand_rps()[:2, 0], [10.0, 1.0], rtol=0.02)
    assert s.expected_demand_rps()[2, 0] > 0.1
    assert np.all(s.available_gpus[:, 0] == 8.0) and np.all(s.available_gpus[:, 1] == np.round(s.available_gpus[:, 1]))
    other = sample_scenarios(inputs(), num_scenarios=50, seed=4, start_s=0.0, interval_s=60.0, horizon=4)
    assert not np.array_equal(s.demand_rps, other.demand_rps)


def test_reduction_keeps_the_mean_exactly_and_the_extreme_scenarios() -> None:
    s = sample_scenarios(inputs(), num_scenarios=64, seed=0, start_s=0.0, interval_s=60.0, horizon=4)
    r = reduce_scenarios(s, 8, seed=0)
    assert r.num_scenarios <= 8 and np.isclose(r.weights.sum(), 1.0)
    assert np.allclose(r.expected_demand_rps(), s.expected_demand_rps())
    assert np.allclose(np.tensordot(r.weights, r.available_gpus, 1), np.tensordot(s.weights, s.available_gpus, 1))
    totals = r.demand_rps.sum(axis=(1, 2))
    assert totals.max() == pytest.approx(s.demand_rps.sum(axis=(1, 2)).max())
    assert totals.min() == pytest.approx(s.demand_rps.sum(axis=(1, 2)).min())
    assert r.available_gpus.sum(axis=(1, 2)).min() == pytest.approx(s.available_gpus.sum(axis=(1, 2)).min())
    assert len(tail_scenarios(s)) >= 2
    assert reduce_scenarios(s, 100) is s


def test_build_scenarios_from_a_request_log_and_a_spot_trace() -> None:
    fleet = make_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2},
                              {"name": "spot", "gpu": "L4", "count": 4, "gpus_per_node": 1, "spot": True}],
                       models=[{"name": "chat", "arch": "Llama-3.1-8B"}, {"name": "idle", "arch": "Llama-3.2-1B"}])
    history = make_table(3000, models=("chat",), rate_per_s=2.0)
    trace = AvailabilityTrace("spot", np.array([0.0, 600.0, 900.0]), np.array([4, -1, 1]), 1500.0)
    s = build_scenarios(fleet, history, now_s=1450.0, interval_s=60.0, horizon=5, num_scenarios=32, reduce_to=8,
                        availability={"spot": trace})
    assert s.models == ("chat", "idle") and s.pools == ("h100", "spot") and s.start_s == 1440.0
    assert s.demand_rps.shape[1:] == (2, 5) and s.num_scenarios <= 8
    assert s.expected_demand_rps()[0].mean() == pytest.approx(2.0, rel=0.25)
    # a model without requests: nothing expected beyond the rule-of-three tail (< one request per interval)
    assert s.expected_demand_rps()[1].max() < 1.0 / 60.0
    assert np.all(s.available_gpus[:, 0] == 2.0) and np.all(s.available_gpus[:, 1] <= 4.0)
    assert np.allclose(s.class_share[:, 0], 1.0) and s.mean_output_tokens[0] == 128.0


def test_builder_refits_cheaply_between_selections() -> None:
    fleet = make_fleet()
    history = make_table(4000, rate_per_s=2.0)
    builder = ScenarioBuilder(fleet, BuilderConfig(interval_s=60.0, horizon=3, num_scenarios=16, reduce_to=None,
                                                   reselect_every=3))
    builder.build(history, 1300.0)
    first = builder.forecasters[0]
    assert first.selection is not None
    fitted = first.selection.fitted
    builder.build(history, 1400.0)
    assert builder.forecasters[0] is first and first.selection.fitted is fitted
    builder.build(history, 1500.0)
    builder.build(history, 1600.0)  # the 4th build re-selects
    assert builder.forecasters[0] is not first
    with pytest.raises(ValueError, match="unknown pools"):
        empty = AvailabilityTrace("x", np.zeros(0), np.zeros(0, int), 1.0)
        builder.build(history, 1400.0, availability={"nope": empty})


def test_builder_accepts_a_sliding_window_of_the_log_without_refitting() -> None:
    fleet = make_fleet()
    log = make_table(8000, rate_per_s=2.0, seed=3)  # 4,000 s of requests
    builder = ScenarioBuilder(fleet, BuilderConfig(interval_s=60.0, horizon=3, num_scenarios=8, reduce_to=None,
                                                   lookback=30))
    builder.build(log.between(0.0, 1800.0), 1800.0)
    first = builder.forecasters[0]
    for now in (1860.0, 1920.0, 2400.0):
        builder.build(log.between(now - 1800.0, now), now)  # the caller keeps only the last 30 minutes
    assert builder.forecasters[0] is first
    full = count_series(log, 60.0, start_s=60.0, end_s=2400.0).counts[0]
    assert np.array_equal(first.history, full)  # the buffer kept what the window dropped
    builder.build(log.between(2000.0, 3800.0), 3800.0)  # past twice the lookback: new grid, new fit
    assert builder.forecasters[0] is not first and len(builder.forecasters[0].history) in (29, 30)
