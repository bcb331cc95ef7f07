"""LoadForecaster: method selection on series with known structure, quantiles, coverage, fallbacks, refits."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.protocols import Forecaster
from forecasters.backtest import rolling_scores
from forecasters.load import LoadForecaster, fit_many
from forecasters.selection import LoadConfig, seasonal_periods, select
from tests.forecasters.synthetic import constant, intermittent, mean_reverting, random_walk, seasonal

HOURLY = 3600.0  # 24 intervals a day: the daily period is 24


def fitted(y: np.ndarray, **config: object) -> LoadForecaster:
    f = LoadForecaster(series="s", config=LoadConfig(**config))  # type: ignore[arg-type]
    f.fit(y, interval_s=HOURLY)
    return f


def test_implements_the_forecaster_protocol() -> None:
    assert isinstance(LoadForecaster(), Forecaster)


def test_a_seasonal_series_picks_a_seasonal_method() -> None:
    f = fitted(seasonal(600, 24))
    assert f.method.startswith(("seasonal_naive", "holt_winters")), f.method
    assert f.forecast(6).backtest is not None
    assert 24 in seasonal_periods(seasonal(600, 24), HOURLY, LoadConfig())


def test_a_constant_series_has_tight_quantiles() -> None:
    fc = fitted(constant(300, 50.0)).forecast(6)
    for q in (0.1, 0.5, 0.9, 0.99):
        assert np.allclose(fc.quantile(q), 50.0)
    assert np.allclose(fc.mean, 50.0)


def test_an_intermittent_series_picks_croston_or_tsb() -> None:
    f = fitted(intermittent(800, prob=0.25, size=30.0, seed=2), max_lead=6)
    assert f.method in ("croston", "tsb"), f.method


def test_mean_reversion_picks_an_autoregressive_method() -> None:
    f = fitted(mean_reverting(800))
    assert f.method.startswith(("ar_diff", "sarimax")), f.method


def test_a_random_walk_keeps_persistence_unless_beaten_clearly() -> None:
    f = fitted(random_walk(600, seed=4))
    chosen = f.selection.chosen.score
    persistence = next(s for s in f.selection.scores if s.method == "persistence")
    # whatever won did so by a significant margin, or it is persistence itself
    assert f.method == "persistence" or np.mean(list(chosen.wape_by_lead.values())) < np.mean(
        list(persistence.wape_by_lead.values()))


def test_quantiles_are_monotone_finite_and_labelled() -> None:
    fc = fitted(seasonal(400, 24, noise=8.0, seed=5)).forecast(30, (0.01, 0.1, 0.5, 0.9, 0.99))
    stacked = np.stack([fc.quantile(q) for q in sorted(fc.quantiles)])
    assert np.all(np.diff(stacked, axis=0) >= 0)
    assert np.all(np.isfinite(stacked)) and np.all(stacked >= 0)
    assert fc.horizon == 30 and fc.interval_s == HOURLY and fc.start_s == 400 * HOURLY


def test_conformal_bands_cover_what_they_claim_on_a_stationary_series() -> None:
    y = seasonal(1500, 24, noise=6.0, seed=6)
    f = fitted(y[:1000], max_lead=3)
    scores = rolling_scores(f.paths(y, 3), y, 999, (1, 3), floor=f.selection.calibration.floor, window=288,
                            calib_start=600)
    for s in scores:
        assert s.coverage["p10-p90"] == pytest.approx(0.8, abs=0.06)
        assert s.coverage["p90"] == pytest.approx(0.9, abs=0.05)


def test_all_zero_history_gets_the_zeros_fallback() -> None:
    fc = fitted(np.zeros(200)).forecast(4)
    assert fc.method == "zeros" and "zero" in fc.fallback_reason
    assert np.allclose(fc.mean, 0.0) and np.all(np.isfinite(fc.quantile(0.99)))


def test_a_short_history_gets_the_recent_mean_fallback_with_poisson_bands() -> None:
    fc = fitted(np.array([4.0, 6.0, 5.0])).forecast(3)
    assert fc.method == "recent_mean" and "shorter" in fc.fallback_reason
    assert np.allclose(fc.mean, 5.0)
    assert fc.quantile(0.1)[0] < 5.0 < fc.quantile(0.99)[0]


def test_gaps_are_filled_and_said_so() -> None:
    y = seasonal(300, 24)
    y[[10, 11, 150]] = np.nan
    fc = fitted(y).forecast(3)
    assert "3 intervals without data" in fc.fallback_reason
    assert np.all(np.isfinite(fc.mean))


def test_a_collection_gap_is_not_read_as_demand_falling_to_zero() -> None:
    y = np.random.default_rng(3).poisson(500.0, 600).astype(float)
    outage = slice(550, 560)
    as_nan, as_zero = y.copy(), y.copy()
    as_nan[outage], as_zero[outage] = np.nan, 0.0
    f = fitted(as_nan[:560])  # the history ends inside the outage
    assert f.selection is not None and np.all(np.array(f.forecast(3).mean) > 400.0)
    # from every origin inside the gap and just after it the forecast stays near the level before it
    paths = f.paths(as_nan, 1)[549:562, 0]
    assert np.all(paths > 400.0)
    zeros = fitted(as_zero[:560])  # what reading the outage as zero demand would have said
    assert zeros.paths(as_zero, 1)[559, 0] < 0.9 * paths[10]
    # filling is causal: what comes after the gap changes no forecast made inside it
    later = as_nan.copy()
    later[560:] *= 3.0
    assert np.array_equal(f.paths(as_nan, 3)[:560], f.paths(later, 3)[:560])


def test_the_backtest_skips_intervals_without_data() -> None:
    y = np.random.default_rng(4).poisson(200.0, 400).astype(float)
    with_gap = y.copy()
    with_gap[380:390] = np.nan  # inside the validation origins
    config = LoadConfig(max_lead=2, methods=("persistence",))
    f = LoadForecaster(series="s", config=config)
    f.fit(with_gap, interval_s=600.0)
    sel = f.selection
    assert sel is not None
    filled = sel.chosen.paths  # forecasts from the carried-forward history
    origins = np.arange(sel.first_origin, 399)
    known = ~np.isnan(with_gap[origins + 1])
    expected = np.abs(filled[origins[known], 0] - y[origins[known] + 1]).sum() / y[origins[known] + 1].sum()
    assert sel.chosen.score.wape_by_lead[1] == pytest.approx(expected)
    # and calibrates on the known outcomes only (the window of 288 is longer than the validation here)
    assert len(sel.calibration.residuals[0]) == known.sum() < origins.size


@pytest.mark.parametrize("bad, where", [([1.0, -2.0, 3.0], "s[1]"), ([1.0, np.inf], "s[1]"), ([], "s")])
def test_bad_histories_raise_an_error_naming_the_series(bad: list[float], where: str) -> None:
    with pytest.raises(InputError) as exc:
        fitted(np.array(bad))
    assert exc.value.where == where


def test_update_keeps_the_method_and_moves_the_forecast_start() -> None:
    y = seasonal(500, 24, seed=7)
    f = fitted(y[:480])
    method, fitted_params = f.method, f.selection.fitted
    f.update(y)
    fc = f.forecast(4)
    assert f.method == method and f.selection.fitted is fitted_params
    assert fc.start_s == 500 * HOURLY


def test_update_of_a_fallback_refits() -> None:
    f = fitted(np.zeros(100))
    f.update(np.r_[np.zeros(100), seasonal(200, 24)])
    assert f.method != "zeros"


def test_fit_many_is_the_same_on_one_or_two_workers() -> None:
    series = np.stack([seasonal(300, 24, seed=s) for s in range(3)] + [intermittent(300, seed=1)])
    names = ["a", "b", "c", "d"]
    one = fit_many(series, names, interval_s=HOURLY, config=LoadConfig(max_lead=4))
    two = fit_many(series, names, interval_s=HOURLY, config=LoadConfig(max_lead=4), workers=2)
    for x, z in zip(one, two):
        assert x.series == z.series and x.method == z.method
        assert np.allclose(x.forecast(4).mean, z.forecast(4).mean)


def test_selection_reports_every_candidate_and_why_others_were_skipped() -> None:
    sel = select(seasonal(200, 24), interval_s=HOURLY, config=LoadConfig(max_lead=4), score_coverage=True)
    names = {s.method for s in sel.scores}
    assert {"persistence", "ewma"} <= names
    assert all(set(s.wape_by_lead) == {1, 2, 3, 4} for s in sel.scores)
    assert all("p10-p90" in s.coverage for s in sel.scores)
