"""Each forecasting method on a series with known structure; `paths` agrees with the library's own forecast."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.tsa.ar_model import AutoReg
from statsmodels.tsa.holtwinters import ExponentialSmoothing
from statsmodels.tsa.statespace.sarimax import SARIMAX

from forecasters.methods import EWMA, TSB, Croston, MethodFailed, Persistence, SeasonalNaive, ewma_levels
from forecasters.statmethods import ARDiff, HoltWinters, Sarimax
from tests.forecasters.synthetic import constant, intermittent, mean_reverting, seasonal


def test_persistence_and_seasonal_naive_paths_are_exact() -> None:
    y = np.arange(10.0)
    assert np.array_equal(Persistence().paths(y, 3)[4], [4.0, 4.0, 4.0])
    p = SeasonalNaive(4).paths(y, 6)
    # from origin 7, lead h reads y[7 + h - 4·ceil(h/4)]: 4, 5, 6, 7, then the next season again
    assert np.array_equal(p[7], [4.0, 5.0, 6.0, 7.0, 4.0, 5.0])
    # origin 1: lead 3 targets y[4], whose value a season earlier (y[0]) is known; the others fall back to y[1]
    assert np.array_equal(p[1], [1.0, 1.0, 0.0, 1.0, 1.0, 1.0])


def test_seasonal_naive_refuses_less_than_a_season() -> None:
    with pytest.raises(MethodFailed):
        SeasonalNaive(24).fit(np.ones(10))


def test_ewma_is_exact_on_a_constant_and_picks_a_large_alpha_on_a_walk() -> None:
    y = constant(50, 7.0)
    assert np.allclose(EWMA().fit(y).paths(y, 4), 7.0)
    walk = np.cumsum(np.random.default_rng(0).normal(0, 1, 400))
    assert EWMA().fit(walk).alpha >= 0.7  # a random walk is best tracked by its last value
    assert np.isclose(ewma_levels(np.array([2.0, 4.0]), 0.5)[1], 3.0)


def test_holt_winters_paths_match_statsmodels_forecast() -> None:
    y = seasonal(300, 24)
    fitted = HoltWinters(24).fit(y)
    ref = ExponentialSmoothing(y, trend="add", damped_trend=True, seasonal="add", seasonal_periods=24,
                               initialization_method="heuristic").fit(use_brute=False)
    # statsmodels reads the season one slot off at exactly h = m; every other lead agrees
    leads = [h for h in range(1, 31) if h != 24]
    assert np.allclose(fitted.forecast(y, 30)[np.array(leads) - 1], ref.forecast(30)[np.array(leads) - 1], atol=1e-6)


def test_holt_follows_a_trend() -> None:
    y = 10 + 2.0 * np.arange(200)
    f = HoltWinters().fit(y).forecast(y, 5)
    assert np.allclose(f, y[-1] + 2.0 * np.arange(1, 6), rtol=0.02)


def test_ar_diff_paths_match_autoreg_forecast_and_catch_mean_reversion() -> None:
    y = mean_reverting(800)
    fitted = ARDiff(lags=4).fit(y)
    ref = AutoReg(np.diff(y), lags=4, trend="n").fit()
    assert np.allclose(fitted.forecast(y, 6), y[-1] + np.cumsum(ref.forecast(6)))
    assert fitted.phi[0] == pytest.approx(-0.6, abs=0.1)


def test_sarimax_paths_match_statsmodels_forecast() -> None:
    y = mean_reverting(400, seed=1)
    fitted = Sarimax((1, 1, 1)).fit(y)
    ref = SARIMAX(y, order=(1, 1, 1)).filter(np.array(fitted.params))
    assert np.allclose(fitted.forecast(y, 8), ref.forecast(8))


def test_croston_and_tsb_estimate_the_demand_rate_of_an_intermittent_series() -> None:
    y = intermittent(3000, prob=0.1, size=20.0)
    true_rate = 0.1 * 20.0
    for method in (Croston(), TSB()):
        paths = method.fit(y[:2000]).paths(y, 3)
        assert paths[2000:, 0].mean() == pytest.approx(true_rate, rel=0.25), method.name
        assert np.all(np.isfinite(paths)) and np.all(paths >= 0)


def test_intermittent_methods_need_demand() -> None:
    with pytest.raises(MethodFailed):
        Croston().fit(np.zeros(50))
    with pytest.raises(MethodFailed):
        TSB().fit(np.r_[np.zeros(49), 3.0])


@pytest.mark.parametrize("method", [Persistence(), SeasonalNaive(12), EWMA(), HoltWinters(), HoltWinters(12),
                                    ARDiff(lags=3), Croston(), TSB()])
def test_paths_have_one_row_per_origin_and_no_nan(method) -> None:
    y = np.maximum(seasonal(120, 12, seed=3), 0) * (np.arange(120) % 3 == 0)
    paths = method.fit(y).paths(y, 5)
    assert paths.shape == (120, 5)
    assert np.all(np.isfinite(paths))
