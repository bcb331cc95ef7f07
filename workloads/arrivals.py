"""Renewal arrival processes, generated in bulk.

A *segment* is one stream (a client, a model) over one time span with one rate, CV and inter-arrival family —
a ServeGen window of one client, or a whole synthetic model. Each segment is a stationary renewal process: the
first arrival comes after an equilibrium forward-recurrence time (so that E[arrivals in the span] = rate × span
exactly, with no start-up bias), then inter-arrival gaps are i.i.d. from the family. Families are moment-matched:
the mean gap is 1/rate and the gap CV is the given CV (see docs/workloads.md for why the rate and CV columns of
ServeGen are trusted over its fitted parameters).

Everything is vectorised over segments: gaps for all segments of a batch are drawn in one call per family, and a
segmented cumulative sum turns them into arrival times. Segments that run out of gaps before their span ends draw
more in further rounds (rare for CV ≈ 1, common for very bursty segments).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.special import gammaln

TICK_S = 1e-6  # merged arrival times are quantised to this (microseconds)


class Family(IntEnum):
    """Inter-arrival families; the codes are what `ServeGenSet.family` stores."""

    NONE = 0  # no traffic in the window
    GAMMA = 1
    WEIBULL = 2
    EXPONENTIAL = 3


FAMILY_NAMES: tuple[str, ...] = ("", "Gamma", "Weibull", "Exponential")

# Weibull CV as a function of the shape k is monotone decreasing; invert it by interpolation on a log grid.
_WEIBULL_K = np.geomspace(0.02, 200.0, 4096)
_WEIBULL_LOG_CV = 0.5 * np.log(np.expm1(gammaln(1 + 2 / _WEIBULL_K) - 2 * gammaln(1 + 1 / _WEIBULL_K)))


def weibull_cv(shape: np.ndarray | float) -> np.ndarray:
    """CV of a Weibull distribution with shape k: sqrt(Γ(1+2/k)/Γ(1+1/k)² − 1)."""
    k = np.asarray(shape, dtype=np.float64)
    return np.sqrt(np.expm1(gammaln(1 + 2 / k) - 2 * gammaln(1 + 1 / k)))


def weibull_shape_for_cv(cv: np.ndarray | float) -> np.ndarray:
    """The Weibull shape whose CV is `cv` (clipped to the shapes 0.02 … 200, i.e. CV ≈ 0.006 … 10¹⁴)."""
    log_cv = np.log(np.asarray(cv, dtype=np.float64))
    # np.interp needs increasing x: the grid's CV decreases with k, so interpolate on the reversed grid.
    return np.interp(log_cv, _WEIBULL_LOG_CV[::-1], _WEIBULL_K[::-1])


def empty_window_probability(mean_count: np.ndarray | float, cv: np.ndarray | float) -> np.ndarray:
    """P(a window holds no arrival) for a stationary renewal process with Gamma gaps, `mean_count` arrivals per
    window on average and gap CV `cv`.

    The window starts at a random time, so it is empty when the forward-recurrence time exceeds its length w:
    P = λ·E[(X − w)⁺] for gaps X ~ Gamma(k = 1/cv², θ = 1/(kλ)), which is `Γsf(k+1, w/θ) − λw·Γsf(k, w/θ)`
    (Γsf the regularised upper incomplete gamma). CV 1 gives the Poisson e^(−λw); bursty streams are empty far more
    often (λw = 20: CV 1 → 2·10⁻⁹, CV 8 → 0.46). A CV that is missing or not positive is taken as 1.
    """
    from scipy.special import gammaincc

    m = np.asarray(mean_count, dtype=np.float64)
    cv = np.asarray(cv, dtype=np.float64)
    k = 1.0 / np.where(np.isfinite(cv) & (cv > 0), cv, 1.0) ** 2
    x = m * k  # w / θ
    p = gammaincc(k + 1.0, x) - m * gammaincc(k, x)
    return np.where(m > 0, np.clip(p, 0.0, 1.0), 1.0)


def moment_match(family: np.ndarray, rate_per_s: np.ndarray, cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shape, scale) per element so that the family's mean gap is 1/rate and its CV is `cv`.

    Gamma: shape = 1/cv², scale = 1/(rate·shape). Weibull: shape from the CV, scale = 1/(rate·Γ(1+1/shape)).
    Exponential: shape 1, scale 1/rate (its CV is 1 whatever `cv` says). Elements with no traffic get (1, inf).
    """
    family = np.asarray(family)
    rate = np.asarray(rate_per_s, dtype=np.float64)
    cv = np.asarray(cv, dtype=np.float64)
    shape = np.ones(rate.shape)
    scale = np.full(rate.shape, np.inf)
    live = rate > 0
    g = live & (family == Family.GAMMA)
    shape[g] = 1.0 / cv[g] ** 2
    scale[g] = 1.0 / (rate[g] * shape[g])
    w = live & (family == Family.WEIBULL)
    shape[w] = weibull_shape_for_cv(cv[w])
    scale[w] = 1.0 / (rate[w] * np.exp(gammaln(1 + 1 / shape[w])))
    e = live & (family == Family.EXPONENTIAL)
    scale[e] = 1.0 / rate[e]
    return shape, scale


def draw_gaps(
    rng: np.random.Generator, family: np.ndarray, shape: np.ndarray, scale: np.ndarray, num: np.ndarray
) -> np.ndarray:
    """`num[i]` inter-arrival gaps (float64 seconds) for each segment i, concatenated in segment order.

    Segments must be grouped by family (contiguous runs), so each family is drawn in one call on a slice.
    """
    out = np.empty(int(num.sum()))
    ends = np.cumsum(num)
    for fam, lo, hi in equal_runs(family):
        a, b = (int(ends[lo - 1]) if lo else 0), int(ends[hi - 1])
        count, seg = num[lo:hi], slice(lo, hi)
        if fam == Family.WEIBULL:
            # Weibull(k, λ) = λ·E^(1/k) with E ~ Exp(1): cheaper than a rejection sampler.
            draws = rng.standard_exponential(b - a, dtype=np.float32) ** np.repeat((1.0 / shape[seg]).astype(np.float32), count)
        elif fam == Family.GAMMA:
            draws = rng.standard_gamma(np.repeat(shape[seg].astype(np.float32), count), dtype=np.float32)
        else:
            draws = rng.standard_exponential(b - a, dtype=np.float32)
        np.multiply(draws, np.repeat(scale[seg], count), out=out[a:b])
    return out


def equal_runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, first, end) of each maximal run of equal integer values, in order (`end` exclusive)."""
    cuts = np.flatnonzero(np.diff(values)) + 1
    bounds = np.concatenate([[0], cuts, [values.shape[0]]])
    return [(int(values[lo]), int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def draw_residuals(rng: np.random.Generator, family: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Equilibrium forward-recurrence times: U·X* with X* the length-biased gap.

    Length-biased Gamma(k, θ) is Gamma(k+1, θ); for Weibull(k, λ), (X*/λ)^k ~ Gamma(1+1/k); for the exponential
    the residual is again exponential. Starting each segment this way makes it a stationary renewal process.
    Segments must be grouped by family, as for `draw_gaps`.
    """
    out = np.empty(family.shape[0])
    for fam, lo, hi in equal_runs(family):
        k, lam = shape[lo:hi], scale[lo:hi]
        if fam == Family.WEIBULL:
            biased = lam * rng.standard_gamma(1.0 + 1.0 / k) ** (1.0 / k)
        elif fam == Family.GAMMA:
            biased = lam * rng.standard_gamma(k + 1.0)
        else:
            out[lo:hi] = lam * rng.standard_exponential(hi - lo)
            continue
        out[lo:hi] = rng.random(hi - lo) * biased
    return out


@dataclass(frozen=True)
class Segments:
    """Renewal processes to generate, one per row (all arrays shape (S,))."""

    stream: np.ndarray  # int: which output stream (client / model) the arrivals belong to
    start_s: np.ndarray  # float64: span start (absolute seconds)
    span_s: np.ndarray  # float64: span length
    rate_per_s: np.ndarray  # float64 > 0
    family: np.ndarray  # int8 Family codes (not NONE)
    shape: np.ndarray  # float64, from `moment_match`
    scale: np.ndarray  # float64, from `moment_match`

    def __len__(self) -> int:
        return int(self.stream.shape[0])


def renewal_arrivals(segs: Segments, rng: np.random.Generator, *, origin_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Every arrival of every segment, merged in time order: (seconds since `origin_s`, stream).

    Times are quantised to TICK_S: each arrival is packed with its stream into one int64 key (time ticks in the
    high bits), so a single integer sort orders both columns.
    """
    order = np.argsort(segs.family, kind="stable")  # families contiguous: gaps are drawn per slice
    fam, shape, scale, rate = (a[order] for a in (segs.family, segs.shape, segs.scale, segs.rate_per_s))
    stream = segs.stream[order].astype(np.int64)
    start = segs.start_s[order] - origin_s
    end = start + segs.span_s[order]
    bits = max(int(stream.max()).bit_length(), 1) if len(segs) else 1
    if len(segs) and end.max() / TICK_S >= 2 ** (62 - bits):
        raise ValueError(f"{end.max():g} s is too long a span to merge {stream.max() + 1} streams at {TICK_S:g} s ticks")
    cur = start + draw_residuals(rng, fam, shape, scale)
    first = np.flatnonzero(cur < end)
    keys = [_pack(cur[first], stream[first], bits)]
    active = first
    round_no = 0
    while active.shape[0]:
        expected = rate[active] * (end[active] - cur[active])
        # Enough gaps to cover the rest of the span with high probability when CV ≈ 1; bursty segments may need
        # more rounds, so later rounds draw progressively more.
        num = np.ceil(expected * (1 + round_no) + 3 * np.sqrt(expected) + 2).astype(np.int64)
        gaps = draw_gaps(rng, fam[active], shape[active], scale[active], num)
        total = np.cumsum(gaps)
        last = np.cumsum(num) - 1
        head = last - num + 1
        # segmented cumulative sum, restarted at each segment's current time, in one pass
        times = total + np.repeat(cur[active] - total[head] + gaps[head], num)
        keep = times < np.repeat(end[active], num)
        keys.append(_pack(times[keep], np.repeat(stream[active], num)[keep], bits))
        cur[active] = times[last]
        active = active[cur[active] < end[active]]
        round_no += 1
    key = np.sort(np.concatenate(keys), kind="stable")
    return (key >> bits) * TICK_S, key & ((1 << bits) - 1)


def _pack(times_s: np.ndarray, stream: np.ndarray, bits: int) -> np.ndarray:
    return ((times_s * (1.0 / TICK_S)).astype(np.int64) << bits) | stream
