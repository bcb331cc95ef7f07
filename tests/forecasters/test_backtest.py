"""WAPE, conformal quantiles, calibration beyond the calibrated leads, Diebold–Mariano, and no look-ahead."""

from __future__ import annotations

import numpy as np
import pytest

from forecasters.backtest import (
    Calibration,
    calibrate,
    conformal_quantile,
    improvement_tstat,
    rolling_bands,
    wape,
)


def test_wape_counts_absolute_errors_over_actuals_and_never_divides_by_zero() -> None:
    assert wape(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == pytest.approx(0.5)
    assert wape(np.array([0.5, 0.0]), np.zeros(2)) == pytest.approx(0.5)  # denominator floored at 1


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
