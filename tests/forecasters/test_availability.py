"""AvailabilityForecaster on a synthetic event stream with a known preemption hazard."""

from __future__ import annotations

import numpy as np
import pytest

from core.protocols import Forecaster
from forecasters.availability import (
    AvailabilityConfig,
    AvailabilityForecaster,
    adaptive_bands,
    arima_paths,
    backtest_availability,
    change_cdf,
    rolling_change_quantiles,
)
from workloads.availability import AvailabilityTrace

HAZARD_PER_HOUR = 0.5
CAPACITY = 16


def spot_pool(hours: float = 48.0, seed: int = 0) -> AvailabilityTrace:
    """16 GPUs; each is preempted at HAZARD_PER_HOUR and replaced 10 minutes later (minute resolution)."""
    rng = np.random.default_rng(seed)
    times, deltas = [0.0], [CAPACITY]
    for _ in range(CAPACITY):
        t = 0.0
        while True:
            t += rng.exponential(3600.0 / HAZARD_PER_HOUR)
            if t > hours * 3600:
                break
            down = np.floor(t / 60) * 60
            times += [down, down + 600.0]
            deltas += [-1, 1]
            t = down + 600.0
    order = np.argsort(times, kind="stable")
    return AvailabilityTrace("spot", np.array(times)[order], np.array(deltas)[order], hours * 3600)


def test_hazard_and_distribution_on_a_known_stream() -> None:
    trace = spot_pool()
    y = trace.counts(60.0)
    f = AvailabilityForecaster(pool="spot", capacity=CAPACITY)
    f.fit(y, interval_s=60.0, removals=trace.removals())
    assert isinstance(f, Forecaster)
    assert f.hazard_per_hour == pytest.approx(HAZARD_PER_HOUR, rel=0.35)
    d = f.distribution(12)
    assert np.allclose(d.pmf.sum(axis=1), 1.0) and d.capacity == CAPACITY
    assert d.forecast.quantity == "gpus" and d.forecast.series == "pool:spot"
    assert np.all(d.quantile(0.99) <= CAPACITY)
    qs = np.stack([d.forecast.quantile(q) for q in sorted(d.forecast.quantiles)])
    assert np.all(np.diff(qs, axis=0) >= 0)
    assert d.preempt_prob_per_interval == pytest.approx(1 - np.exp(-f.hazard_per_hour / 60))


def test_a_short_history_mixes_its_changes_with_binomial_survival() -> None:
    f = AvailabilityForecaster(pool="spot", capacity=8)
    f.fit(np.full(10, 8.0), interval_s=60.0)
    fc = f.forecast(5)
    assert fc.method == "empirical_change+binomial_survival" and "binomial survival" in fc.fallback_reason
    assert f.hazard_per_hour > 0  # the prior keeps a pool without seen preemptions from looking immortal
    assert fc.quantile(0.1)[-1] <= 8.0 and fc.mean[-1] < 8.0


def test_a_young_trace_expects_reclaimed_gpus_back_as_it_has_seen_them_return() -> None:
    # a wave took three of eight GPUs and they came back; now three are gone again
    y = np.array([8, 8, 8, 5, 5, 6, 7, 8, 8, 8, 8, 5], dtype=float)
    f = AvailabilityForecaster(pool="spot", capacity=8)
    f.fit(y, interval_s=300.0)
    d = f.distribution(3)
    assert d.forecast.fallback_reason and d.pmf[:, 6:].sum(axis=1).min() > 0.05  # binomial survival alone: 0
    # with min_samples changes resolved the mixture is the empirical forecast itself (no jump at the threshold)
    full = AvailabilityForecaster(pool="spot", capacity=8, config=AvailabilityConfig(min_samples=len(y) - 1))
    full.fit(y, interval_s=300.0)
    one = full.distribution(1)
    assert one.forecast.method == "empirical_change"
    assert one.pmf[0] == pytest.approx(np.bincount(np.clip(5 + np.diff(y), 0, 8).astype(int), minlength=9) / 11)


def test_backtest_matches_the_forecaster_and_reports_baselines() -> None:
    y = spot_pool(8.0, seed=1).counts(60.0).astype(float)
    f = AvailabilityForecaster(pool="spot", capacity=CAPACITY)
    f.fit(y[:-1], interval_s=60.0)
    rolled = rolling_change_quantiles(y, 3, (0.1, 0.5, 0.9), window=f.config.window,
                                      min_samples=f.config.min_samples, capacity=CAPACITY)
    d = f.distribution(3)
    # the rolling backtest at the last origin uses the changes resolved by then: the forecaster's own rule
    for q in (0.1, 0.5, 0.9):
        assert abs(rolled[q][len(y) - 2] - d.quantile(q)[2]) <= 1.0
    scores = backtest_availability(y, (1, 5), capacity=CAPACITY)
    assert {s.method for s in scores} == {"empirical_change", "persistence", "arima(1,1,0)"}
    ours = {s.lead: s for s in scores if s.method == "empirical_change"}
    assert 0.6 <= ours[5].coverage_p10_p90 <= 1.0
    assert all(0.6 <= s.pit_coverage_p10_p90 <= 0.95 for s in ours.values())
    assert all(s.pit_coverage_p10_p90 is None for s in scores if s.method != "empirical_change")
    assert all(0.6 <= s.coverage_adaptive <= 1.0 and 0 <= s.width_adaptive for s in ours.values())


def test_change_cdf_is_the_forecasters_distribution_at_every_origin() -> None:
    y = spot_pool(8.0, seed=2).counts(60.0).astype(float)
    lead = 4
    origins = np.array([5, 100, 300, len(y) - 1 - lead])
    below, at = change_cdf(y, lead, origins, capacity=CAPACITY)
    for i, t in enumerate(origins):
        f = AvailabilityForecaster(pool="spot", capacity=CAPACITY)
        f.fit(y[: t + 1], interval_s=60.0)
        actual = int(y[t + lead])
        if f.change_samples(lead).size < f.config.min_samples:  # too few: a point mass at the count now
            assert (below[i], at[i]) == (float(y[t] <= actual - 1), float(y[t] <= actual))
            continue
        cdf = np.cumsum(f.distribution(lead).pmf[lead - 1])
        assert at[i] == pytest.approx(cdf[actual])
        assert below[i] == pytest.approx(cdf[actual - 1] if actual > 0 else 0.0)


def _moving_pool(seed: int, minutes: int = 3000) -> np.ndarray:
    """A count of 0–40 GPUs that moves by ±1 or ±2 in about 60 % of the minutes, drawn back towards 20."""
    rng = np.random.default_rng(seed)
    y = [20.0]
    for _ in range(minutes - 1):
        step = rng.choice([-2, -1, 0, 1, 2], p=[0.1, 0.2, 0.4, 0.2, 0.1])
        step -= np.sign(y[-1] - 20) * (rng.random() < 0.1)
        y.append(float(np.clip(y[-1] + step, 0, 40)))
    return np.array(y)


def test_the_adaptive_band_covers_its_level_where_fixed_quantiles_of_a_count_cannot() -> None:
    """The p10–p90 band of an integer count admits whole steps and covers well over 80 % one minute ahead; the
    adaptive band's share of misses stays within the bound of adaptive conformal inference, (1 + γ)/(γ·T), of 20 %,
    with a narrower band."""
    y = _moving_pool(4)
    config = AvailabilityConfig()
    for lead, tolerance in ((1, (1 + config.band_gamma) / (config.band_gamma * (len(y) - 1))), (5, 0.02)):
        origins = np.arange(len(y) - lead)  # at 5 minutes ahead the outcomes resolve late: no exact bound
        actual = y[origins + lead]
        fixed = rolling_change_quantiles(y, lead, (0.1, 0.9), window=config.window, min_samples=config.min_samples,
                                         capacity=40)
        lo, hi = adaptive_bands(y, lead, capacity=40, config=config)
        adaptive = np.mean((actual >= lo[origins]) & (actual <= hi[origins]))
        assert abs(adaptive - config.band_level) <= tolerance
        if lead == 1:
            assert np.mean((actual >= fixed[0.1][origins]) & (actual <= fixed[0.9][origins])) > 0.88
            assert np.mean(hi - lo) < np.mean(fixed[0.9] - fixed[0.1]) - 0.5


def test_the_adaptive_band_widens_soon_after_a_quiet_pool_turns_volatile() -> None:
    """Eight quiet hours (the count never moves) then a volatile one: the band, the count alone while quiet, admits
    other counts within half an hour. Without the cap on its miss rate, the quiet hours would have piled up a rate
    of about 5, which 125 misses in a row would take to bring down."""
    rng = np.random.default_rng(5)
    quiet = np.full(480, 16.0)
    volatile = np.clip(16 + np.cumsum(rng.choice([-2, -1, 1, 2], size=60)), 0, 32)
    y = np.r_[quiet, volatile].astype(float)
    lo, hi = adaptive_bands(y, 1, capacity=32)
    assert np.all(lo[40:480] == 16) and np.all(hi[40:480] == 16)
    assert np.all((lo <= hi)[~np.isnan(lo)]) and np.nanmin(lo) >= 0 and np.nanmax(hi) <= 32
    assert np.flatnonzero(hi[480:] - lo[480:] > 0)[0] <= 30
    f = AvailabilityForecaster(pool="spot", capacity=32)
    f.fit(y, interval_s=60.0)
    band = f.band(3)
    assert band.shape == (3, 2) and np.all(band[:, 0] <= band[:, 1])
    assert tuple(band[0]) == (lo[-1], hi[-1])  # the forecaster's band is the backtest's at the last origin


def test_arima_baseline_is_persistence_until_it_can_fit() -> None:
    y = np.r_[np.full(20, 5.0), np.arange(40.0)]
    paths = arima_paths(y, 2, first_origin=0, min_fit=30)
    assert np.array_equal(paths[:29, 0], y[:29])
    assert np.all(np.isfinite(paths))
