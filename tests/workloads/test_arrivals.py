"""Renewal processes: moment matching against scipy's distributions, stationarity, and the merged output order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from workloads.arrivals import (
    Family,
    Segments,
    moment_match,
    renewal_arrivals,
    weibull_cv,
    weibull_shape_for_cv,
)


@pytest.mark.parametrize("cv", [0.05, 0.5, 1.0, 3.0, 12.0, 150.0])
def test_weibull_shape_inverts_the_cv(cv: float) -> None:
    assert weibull_cv(weibull_shape_for_cv(cv)) == pytest.approx(cv, rel=1e-3)


@pytest.mark.parametrize("cv", [0.3, 1.0, 2.5, 8.0])
def test_moment_match_gives_the_rate_and_cv(cv: float) -> None:
    rate = np.array([4.0, 4.0])
    fam = np.array([Family.GAMMA, Family.WEIBULL], np.int8)
    shape, scale = moment_match(fam, rate, np.array([cv, cv]))
    for dist in (stats.gamma(shape[0], scale=scale[0]), stats.weibull_min(shape[1], scale=scale[1])):
        assert dist.mean() == pytest.approx(1 / 4.0, rel=1e-3)
        assert dist.std() / dist.mean() == pytest.approx(cv, rel=1e-3)


def test_exponential_ignores_the_cv_and_idle_windows_get_no_scale() -> None:
    shape, scale = moment_match(np.array([Family.EXPONENTIAL, Family.NONE], np.int8), np.array([2.0, 0.0]),
                                np.array([5.0, 0.0]))
    assert shape[0] == 1.0 and scale[0] == 0.5 and np.isinf(scale[1])


def _segments(family: int, rate: float, cv: float, n: int, span_s: float) -> Segments:
    fam = np.full(n, family, np.int8)
    shape, scale = moment_match(fam, np.full(n, rate), np.full(n, cv))
    return Segments(stream=np.arange(n) % 7, start_s=np.arange(n) * span_s, span_s=np.full(n, span_s),
                    rate_per_s=np.full(n, rate), family=fam, shape=shape, scale=scale)


@pytest.mark.parametrize(("family", "cv"), [(Family.GAMMA, 0.5), (Family.GAMMA, 4.0), (Family.WEIBULL, 2.0),
                                            (Family.WEIBULL, 6.0), (Family.EXPONENTIAL, 1.0)])
def test_counts_are_unbiased_and_gaps_have_the_cv(family: int, cv: float) -> None:
    """Stationary start: E[count] = rate × span even for short, bursty spans."""
    rate, span, n = 3.0, 20.0, 4000
    segs = _segments(family, rate, cv, n, span)
    times, stream = renewal_arrivals(segs, np.random.default_rng(11), origin_s=0.0)
    counts = np.bincount((times // span).astype(int), minlength=n)
    # Var[count] ≈ rate·span·cv² for a renewal process: the mean over n spans is within 4 standard errors.
    assert abs(counts.mean() - rate * span) < 4 * np.sqrt(rate * span * cv**2 / n) + 0.05
    assert np.all(np.diff(times) >= 0) and set(np.unique(stream)) <= set(range(7))
    gaps = np.diff(times)[np.diff((times // span).astype(int)) == 0]  # gaps inside one segment's span
    if cv <= 2:  # the sample CV of heavy-tailed gaps converges too slowly to test on a sample this size
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_streams_are_merged_in_time_order_with_microsecond_ticks() -> None:
    segs = _segments(Family.GAMMA, 50.0, 1.0, 3, 10.0)
    segs = Segments(stream=np.array([0, 1, 2]), start_s=np.zeros(3), span_s=segs.span_s, rate_per_s=segs.rate_per_s,
                    family=segs.family, shape=segs.shape, scale=segs.scale)
    times, stream = renewal_arrivals(segs, np.random.default_rng(0), origin_s=-5.0)
    assert np.all(np.diff(times) >= 0) and times.min() >= 5.0 and times.max() < 15.0
    assert np.allclose(times * 1e6, np.round(times * 1e6))
    counts = np.bincount(stream)
    assert counts.shape == (3,) and all(400 < c < 600 for c in counts)  # 50/s over 10 s each


def test_same_seed_same_arrivals() -> None:
    segs = _segments(Family.WEIBULL, 2.0, 3.0, 50, 30.0)
    a = renewal_arrivals(segs, np.random.default_rng(5), origin_s=0.0)
    b = renewal_arrivals(segs, np.random.default_rng(5), origin_s=0.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
