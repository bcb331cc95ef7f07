"""WAPE, conformal quantiles, calibration beyond the calibrated leads, Diebold–Mariano, no look-ahead, and the
randomised PIT of count forecasts, and the standard error of a coverage share."""

from __future__ import annotations

import numpy as np
import pytest

from forecasters.backtest import (
    Calibration,
    calibrate,
    conformal_quantile,
    improvement_tstat,
    pit_coverage,
    ranked_probability_score,
    rolling_bands,
    rolling_scores,
    share_se,
    wape,
)


def test_wape_counts_absolute_errors_over_actuals_and_never_divides_by_zero() -> None:
    assert wape(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == pytest.approx(0.5)
    assert wape(np.array([0.5, 0.0]), np.zeros(2)) == pytest.approx(0.5)  # denominator floored at 1
    assert wape(np.array([1.0, 3.0, 9.0]), np.array([2.0, 2.0, np.nan])) == pytest.approx(0.5)  # unknown: skipped


def test_calibration_and_the_diebold_mariano_test_skip_unknown_outcomes() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(100.0, 10.0, 200)
    paths = np.full((200, 2), 100.0)
    gappy = y.copy()
    gappy[[150, 151, 170]] = np.nan
    cal = calibrate(paths, gappy, 100, window=500, floor=1.0)
    assert [len(r) for r in cal.residuals] == [99 - 3, 98 - 3] and all(np.isfinite(r).all() for r in cal.residuals)
    better = paths + rng.normal(0.0, 1.0, paths.shape) + (y[np.minimum(np.arange(200) + 1, 199)] - 100.0)[:, None]
    t = improvement_tstat(paths, better, gappy, 100)
    assert np.isfinite(t) and t > 3.0


def test_conformal_quantile_takes_the_ceiling_rank() -> None:
    r = np.arange(1.0, 10.0)  # 9 residuals
    assert conformal_quantile(r, 0.5) == 5.0  # ceil(10 · 0.5) = 5th
    assert conformal_quantile(r, 0.9) == 9.0  # ceil(9.0) = 9th
    assert conformal_quantile(r, 0.99) == 9.0  # clamped to the largest
    assert conformal_quantile(np.zeros(0), 0.9) == 0.0


def test_calibration_scales_with_the_forecast_and_widens_beyond_calibrated_leads() -> None:
    cal = Calibration((np.array([-0.1, 0.0, 0.1]),), floor=1.0)
    q = cal.quantiles(np.array([100.0, 100.0, 100.0, 100.0]), (0.1, 0.9))
    assert q[0.9][0] == pytest.approx(110.0) and q[0.1][0] == pytest.approx(90.0)
    assert q[0.9][3] == pytest.approx(100.0 + 10.0 * np.sqrt(4))  # lead 4 from lead 1 by √(4/1)
    zero = cal.quantiles(np.array([0.0]), (0.1, 0.9))  # below the floor: absolute residuals at scale 1
    assert zero[0.1][0] == 0.0 and zero[0.9][0] == pytest.approx(0.1)


def test_calibrate_uses_only_resolved_origins() -> None:
    y = np.arange(20.0)
    paths = np.repeat(y[:, None], 3, axis=1)  # persistence: residual of lead h is h
    cal = calibrate(paths, y, 5, window=100, floor=1e-9)
    for h, resid in enumerate(cal.residuals, start=1):
        assert resid.size == 20 - h - 5
        assert np.allclose(resid, np.sort(h / y[5:20 - h]))  # kept sorted


def test_improvement_tstat_is_large_for_a_clearly_better_forecast_and_zero_for_a_copy() -> None:
    rng = np.random.default_rng(0)
    y = 100 + rng.normal(0, 5, 400)
    good = np.full((400, 3), 100.0)
    bad = good + 20
    assert improvement_tstat(bad, good, y, 10) > 5
    assert improvement_tstat(good, bad, y, 10) < -5
    assert improvement_tstat(good, good.copy(), y, 10) == 0.0


def test_rolling_bands_never_use_a_residual_not_yet_known() -> None:
    y = np.zeros(60)
    y[40] = 1000.0  # one huge surprise at index 40
    paths = np.zeros((60, 2))
    origins, _, bands = rolling_bands(paths, y, 0, 2, (0.99,), floor=1.0, window=100)
    up = bands[0.99]
    # the surprise is the outcome of origin 38 at lead 2; it is known from origin 40 on, not before
    assert np.all(up[origins < 40] == 0.0)
    assert np.all(up[origins >= 40] > 0.0)


def test_intervals_without_data_are_neither_scored_nor_used_to_calibrate() -> None:
    y = np.full(80, 100.0)
    y[[30, 31, 50]] = np.nan  # a collection gap and a lost interval
    paths = np.full((80, 1), 90.0)
    origins, _, bands = rolling_bands(paths, y, 20, 1, (0.9,), floor=1.0, window=50)
    assert not np.isin(origins + 1, [30, 31, 50]).any() and origins.size == 79 - 20 - 3
    assert np.all(np.isfinite(bands[0.9][origins > 21]))  # the missing residuals are skipped, not propagated
    score = rolling_scores(paths, y, 20, (1,), floor=1.0, window=50)[0]
    assert score.num_origins == origins.size and np.isfinite(score.wape) and np.isfinite(score.pinball)
    assert score.wape == pytest.approx(0.1)


def test_randomised_pit_is_80_percent_for_calibrated_counts_where_an_integer_band_is_not() -> None:
    from scipy.stats import poisson

    rng = np.random.default_rng(0)
    mean = 1.5
    a = rng.poisson(mean, 20_000).astype(float)
    calibrated = pit_coverage(poisson.cdf(a - 1, mean), poisson.cdf(a, mean), 0.1, 0.9)
    assert calibrated == pytest.approx(0.8, abs=0.01)
    # the p10–p90 band of the very same, correct distribution holds whole integers and over-covers
    band = (a >= poisson.ppf(0.1, mean)) & (a <= poisson.ppf(0.9, mean))
    assert band.mean() > 0.85
    # overdispersed outcomes (negative binomial, same mean, 3x the variance) under the Poisson forecast: the
    # distribution is too narrow and the outcomes land in its tails
    wide = rng.negative_binomial(0.75, 1 / 3, 20_000).astype(float)  # mean 1.5, variance 4.5
    narrow = pit_coverage(poisson.cdf(wide - 1, mean), poisson.cdf(wide, mean), 0.1, 0.9)
    assert narrow < calibrated - 0.05


def test_randomised_pit_of_a_point_mass_is_uniform_when_right_and_outside_when_wrong() -> None:
    hit = pit_coverage(np.zeros(4), np.ones(4), 0.1, 0.9)  # F(a-1) = 0, F(a) = 1: U uniform on [0, 1]
    assert hit == pytest.approx(0.8)
    miss = pit_coverage(np.ones(4), np.ones(4), 0.1, 0.9)  # outcome above all the mass: U = 1
    assert miss == 0.0


def test_share_se_is_binomial_for_independent_outcomes_and_wider_when_misses_come_in_runs() -> None:
    rng = np.random.default_rng(3)
    independent = rng.random(4000) < 0.9
    assert share_se(independent, 1) == pytest.approx(np.sqrt(0.09 / 4000), rel=0.15)
    runs = np.repeat(rng.random(400) < 0.9, 10)  # the same 4,000 outcomes' share, in runs of ten
    assert share_se(runs, 1) > 2 * np.sqrt(0.09 / 4000)
    assert share_se(np.ones(50, dtype=bool), 1) == 0.0
    assert np.isnan(share_se(np.array([True, False]), 1))


def test_rolling_scores_give_each_coverage_its_standard_error() -> None:
    rng = np.random.default_rng(4)
    y = 100 + rng.normal(0, 5, 600)
    paths = np.tile(np.r_[100.0, y[:-1]][:, None], (1, 2))  # persistence-like paths of two leads
    assert rolling_scores(paths, y, 300, (1,), floor=10.0, window=200)[0].coverage_se == {}  # only when asked
    for score in rolling_scores(paths, y, 300, (1, 2), floor=10.0, window=200, standard_errors=True):
        assert set(score.coverage_se) == set(score.coverage)
        assert all(0 < se < 0.1 for se in score.coverage_se.values())


def test_ranked_probability_score_is_zero_when_right_and_counts_gpus_when_off() -> None:
    exact, one_off = np.eye(5)[2], np.eye(5)[3]
    assert ranked_probability_score(np.stack([exact, one_off]), np.array([2, 2])) == pytest.approx([0.0, 1.0])
    spread = np.full(5, 0.2)  # uniform over 0…4 against 2: (0.2² + 0.4² + 0.4² + 0.2²)
    assert ranked_probability_score(spread, np.array([2]))[0] == pytest.approx(0.4)
