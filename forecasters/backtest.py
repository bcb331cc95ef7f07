"""Rolling-origin backtests and conformal quantiles.

Conventions (used by selection, the CLI and the benchmark alike):

- An *origin* `t` is the index of the last observed interval; the forecast for lead `h` targets `y[t+h]`.
- WAPE over a set of origins is `Σ|ŷ - y| / Σ|y|` (with the denominator at least 1, so an all-zero stretch scores
  its absolute error instead of dividing by zero). MAPE is never used: it explodes on near-zero intervals.
- Quantiles are *conformal*: the point forecast plus a quantile of past scaled residuals `(y - ŷ) / scale` of the
  same lead, where `scale = max(ŷ, floor)`. Scaling makes residuals of a busy hour and a quiet night comparable;
  the floor keeps near-zero forecasts from producing infinite ratios. At every origin only residuals whose outcome
  was already known there are used (origins `≤ t - h`), so backtest coverage is honest, not in-sample.
- A target that is NaN (no data for that interval, see `forecasters.series`) is never scored and never calibrates:
  WAPE, residuals, Diebold–Mariano tests and rolling bands all skip it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

DEFAULT_LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99)
INTERVALS: dict[str, tuple[float, float]] = {"p10-p90": (0.1, 0.9), "p50-p90": (0.5, 0.9), "p1-p99": (0.01, 0.99)}


def wape(forecast: np.ndarray, actual: np.ndarray) -> float:
    """Weighted absolute percentage error as a fraction: `Σ|forecast - actual| / max(Σ|actual|, 1)`, over the
    intervals whose actual is known (not NaN)."""
    forecast, actual = np.asarray(forecast), np.asarray(actual)
    known = np.isfinite(actual)
    if not known.all():
        forecast, actual = forecast[known], actual[known]
    return float(np.abs(forecast - actual).sum() / max(float(np.abs(actual).sum()), 1.0))


def origins_for(num: int, first: int, lead: int) -> np.ndarray:
    """Origins `first … num-1-lead`: every origin from `first` whose target lies inside the series."""
    return np.arange(max(first, 0), num - lead)


def scale_floor(y: np.ndarray) -> float:
    """Smallest scale for residuals: a tenth of the mean level of the known values (at least 1e-9), see the module
    docstring."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    return max(0.1 * float(np.mean(np.abs(y))) if len(y) else 0.0, 1e-9)


def scaled_residuals(paths: np.ndarray, y: np.ndarray, origins: np.ndarray, lead: int, floor: float) -> np.ndarray:
    """`(y[t+h] - ŷ) / max(ŷ, floor)` at `origins` for lead `h`."""
    point = paths[origins, lead - 1]
    return (y[origins + lead] - point) / np.maximum(point, floor)


def conformal_quantile(sorted_residuals: np.ndarray, level: float) -> float:
    """Finite-sample conformal quantile of residuals sorted ascending: the ⌈(n+1)·q⌉-th smallest (clamped)."""
    n = sorted_residuals.size
    if n == 0:
        return 0.0
    rank = min(max(math.ceil((n + 1) * level), 1), n)
    return float(sorted_residuals[rank - 1])


@dataclass(frozen=True, eq=False)
class Calibration:
    """Scaled residuals per lead from a backtest: turns point forecasts into quantiles.

    `residuals[h-1]` holds the most recent scaled residuals of lead h, sorted ascending. For a lead beyond the
    calibrated ones, the last lead's residuals are widened by `sqrt(h / last)` (random-walk growth of error).
    """

    residuals: tuple[np.ndarray, ...]
    floor: float

    @property
    def max_lead(self) -> int:
        return len(self.residuals)

    def quantiles(self, point: np.ndarray, levels: Sequence[float]) -> dict[float, np.ndarray]:
        """Monotone, non-negative quantiles for the point forecast of leads 1…len(point)."""
        point = np.asarray(point, dtype=np.float64)
        scale = np.maximum(point, self.floor)
        out = {}
        for q in sorted(levels):
            offsets = np.array([self._offset(h, q) for h in range(1, len(point) + 1)])
            out[q] = np.maximum(point + scale * offsets, 0.0)
        return monotone_quantiles(out)

    def _offset(self, lead: int, level: float) -> float:
        if not self.residuals:
            return 0.0
        if lead <= self.max_lead:
            return conformal_quantile(self.residuals[lead - 1], level)
        return conformal_quantile(self.residuals[-1], level) * np.sqrt(lead / self.max_lead)


def monotone_quantiles(quantiles: dict[float, np.ndarray]) -> dict[float, np.ndarray]:
    """Enforce p_a ≤ p_b for a < b at every interval (sorting guards against ties broken by float error)."""
    levels = sorted(quantiles)
    stacked = np.maximum.accumulate(np.stack([quantiles[q] for q in levels]), axis=0)
    return {q: stacked[i] for i, q in enumerate(levels)}


def calibrate(paths: np.ndarray, y: np.ndarray, first_origin: int, *, window: int, floor: float) -> Calibration:
    """Calibration from the last `window` resolved origins (≥ `first_origin`, target known) of every lead."""
    residuals = []
    for h in range(1, paths.shape[1] + 1):
        origins = origins_for(len(y), first_origin, h)
        origins = origins[np.isfinite(y[origins + h])][-window:]
        residuals.append(np.sort(scaled_residuals(paths, y, origins, h, floor)))
    return Calibration(tuple(residuals), floor)


def lead_weights(max_lead: int) -> np.ndarray:
    """Weight 1/h for lead h in selection scores. Plans are receding-horizon: the first intervals of each plan are
    carried out before the next replanning cycle replaces the rest, so near leads matter most."""
    return 1.0 / np.arange(1, max_lead + 1)


def improvement_tstat(baseline: np.ndarray, paths: np.ndarray, y: np.ndarray, first_origin: int, *,
                      cumulative: bool = False) -> float:
    """Diebold–Mariano statistic for "`paths` has smaller absolute errors than `baseline`" over leads 1…L.

    The loss differential per origin is the baseline's absolute error minus the candidate's, summed over the
    leads with `lead_weights` (with `cumulative`, errors of the demand accumulated over leads 1…h), at origins
    `≥ first_origin` whose every lead is resolved and known. Its mean is tested against zero with a
    Newey–West (HAC) variance, since errors of overlapping multi-step forecasts are autocorrelated
    (Diebold & Mariano, J. Business & Economic Statistics 13(3), 1995). Positive and large: the candidate is
    better beyond what chance in the backtest explains.
    """
    max_lead = paths.shape[1]
    origins = origins_for(len(y), first_origin, max_lead)
    actual = np.stack([y[origins + h] for h in range(1, max_lead + 1)], axis=1)
    known = np.isfinite(actual).all(axis=1)
    if not known.all():
        origins, actual = origins[known], actual[known]
    if origins.size < 3:
        return 0.0
    base, cand = baseline[origins], paths[origins]
    if cumulative:
        actual, base, cand = (np.cumsum(a, axis=1) for a in (actual, base, cand))
    diff = ((np.abs(base - actual) - np.abs(cand - actual)) * lead_weights(max_lead)).sum(axis=1)
    if np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):
        return 0.0 if abs(diff[0]) <= 1e-12 else float(np.sign(diff[0]) * np.inf)
    mean, se = hac_mean(diff, max_lead)
    return mean / se


def hac_mean(x: np.ndarray, maxlags: int) -> tuple[float, float]:
    """The mean of a serially correlated series and its Newey–West (HAC) standard error with `maxlags` lags
    (statsmodels' OLS on a constant)."""
    import statsmodels.api as sm

    fit = sm.OLS(np.asarray(x, dtype=np.float64), np.ones(len(x))).fit(cov_type="HAC", cov_kwds={"maxlags": maxlags})
    return float(fit.params[0]), float(fit.bse[0])


def share_se(hits: np.ndarray, lead: int) -> float:
    """Standard error of a coverage figure: the share of `hits` (one 0/1 outcome per origin, in time order) as an
    estimate of the band's true coverage. Misses come in runs — a burst outlasts one interval, and forecasts of lead
    h from neighbouring origins share h − 1 outcomes — so the binomial √(p(1−p)/n) understates it; the Newey–West
    variance takes the autocorrelation in, with max(h − 1, ⌊4 (n/100)^(2/9)⌋) lags (Newey & West, Review of
    Economic Studies 61(4), 1994). On ServeGen's test days the p90's share at +10 min gets 1.3–1.4 points (a
    moving-block bootstrap with 2-hour to 1-day blocks: 1.3–2.0) against a binomial 1.2–1.3. NaN with fewer than 3
    outcomes; 0 when every outcome is the same."""
    hits = np.asarray(hits, dtype=np.float64)
    n = hits.size
    if n < 3:
        return math.nan
    if np.ptp(hits) == 0:
        return 0.0
    return hac_mean(hits, max(lead - 1, int(4 * (n / 100) ** (2 / 9))))[1]


@dataclass(frozen=True)
class LeadScore:
    """Backtest figures of one lead."""

    lead: int
    wape: float
    mae: float
    coverage: dict[str, float]  # interval name → fraction of origins whose actual fell inside
    pinball: float  # mean pinball loss over the evaluated levels, in counts
    num_origins: int
    coverage_se: dict[str, float] = field(default_factory=dict)  # with standard_errors: the same keys (`share_se`)


def rolling_bands(
    paths: np.ndarray,
    y: np.ndarray,
    first_origin: int,
    lead: int,
    levels: Sequence[float],
    *,
    floor: float,
    window: int,
    calib_start: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[float, np.ndarray]]:
    """Forecasts of lead `lead` from origins `≥ first_origin` with rolling conformal quantiles.

    At origin `t` the quantiles come from the last `window` known scaled residuals of origins in
    `[calib_start, t - h]` (those whose outcome is known at `t`; pandas' rolling quantile with the "higher" rule,
    close to the conformal rank). Origins with no resolved residual yet get a zero-width band, so coverage is never
    flattered. A target that is missing (NaN in `y`: no data for that interval) is neither scored nor used to
    calibrate.
    Returns (origins, point forecasts, {level: band}).
    """
    all_origins = origins_for(len(y), calib_start, lead)
    resid = pd.Series(scaled_residuals(paths, y, all_origins, lead, floor), index=all_origins)
    # At origin t the newest usable residual is the one of origin t - h; residuals of missing targets are dropped
    # before the window is counted, and each origin takes the quantile of the newest window known by then.
    known = resid.shift(lead).dropna()
    test = origins_for(len(y), first_origin, lead)
    test = test[np.isfinite(y[test + lead])]
    point = paths[test, lead - 1]
    scale = np.maximum(point, floor)
    bands = {}
    for q in levels:
        off = known.rolling(window, min_periods=1).quantile(q, interpolation="higher").reindex(test, method="ffill")
        bands[float(q)] = np.maximum(point + scale * off.fillna(0.0).to_numpy(), 0.0)
    return test, point, bands


def rolling_scores(
    paths: np.ndarray,
    y: np.ndarray,
    first_origin: int,
    leads: Sequence[int],
    *,
    floor: float,
    window: int,
    calib_start: int = 0,
    levels: Sequence[float] = (0.01, 0.1, 0.5, 0.9, 0.99),
    standard_errors: bool = False,
) -> list[LeadScore]:
    """WAPE, MAE, band coverage and pinball loss per lead over origins `≥ first_origin` (see `rolling_bands`);
    with `standard_errors`, each coverage's standard error too (`share_se`, about 10 ms each)."""
    wanted = sorted(set(levels) | {a for pair in INTERVALS.values() for a in pair})
    out = []
    for h in leads:
        test, point, band = rolling_bands(paths, y, first_origin, h, wanted, floor=floor, window=window,
                                          calib_start=calib_start)
        actual = y[test + h]
        hits = {name: (actual >= band[lo]) & (actual <= band[hi]) for name, (lo, hi) in INTERVALS.items()}
        hits["p90"] = actual <= band[0.9]
        pinball = float(np.mean([pinball_loss(actual, band[float(q)], q) for q in levels]))
        out.append(LeadScore(h, wape(point, actual), float(np.mean(np.abs(point - actual))),
                             {name: float(np.mean(hit)) for name, hit in hits.items()}, pinball, int(test.size),
                             {name: share_se(hit, h) for name, hit in hits.items()} if standard_errors else {}))
    return out


def pinball_loss(actual: np.ndarray, quantile: np.ndarray, level: float) -> float:
    """Mean pinball (quantile) loss of `quantile` as the `level` quantile of `actual`."""
    diff = actual - quantile
    return float(np.mean(np.maximum(level * diff, (level - 1.0) * diff)))


def ranked_probability_score(pmf: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per row, the ranked probability score of a forecast pmf over counts 0…K against the count that came:
    Σ_k (F(k) − 1{actual ≤ k})², the CRPS of a count (Epstein 1969; Gneiting & Raftery, JASA 102(477), 2007).
    It rewards sharpness and calibration at once, and is in count units: a point mass one GPU off scores 1."""
    pmf = np.atleast_2d(np.asarray(pmf, dtype=np.float64))
    cdf = np.cumsum(pmf, axis=1)
    step = np.arange(pmf.shape[1])[None, :] >= np.asarray(actual, dtype=np.float64)[:, None]
    return ((cdf - step) ** 2).sum(axis=1)


def pit_coverage(cdf_below: np.ndarray, cdf_at: np.ndarray, lo: float, hi: float) -> float:
    """Expected share of randomised PITs inside `[lo, hi]` for integer outcomes `a`, given the predictive CDF at
    `a - 1` (`cdf_below`) and at `a` (`cdf_at`).

    A band of integer counts cannot hold a nominal 80 %: it holds whole outcomes, so its coverage jumps between
    the masses of the values it admits. The randomised PIT `U ~ Uniform(F(a-1), F(a))` is uniform on [0, 1] for
    a calibrated forecast of a count (Czado, Gneiting & Held, "Predictive model assessment for count data",
    Biometrics 65(4), 2009), so its share in `[0.1, 0.9]` is 80 % exactly when the distribution is calibrated.
    The expectation over U is taken in closed form, so the figure is deterministic. It scores the calibration of
    the distribution; it is not the coverage of any band a planner could use.
    """
    below, at = np.asarray(cdf_below, dtype=np.float64), np.asarray(cdf_at, dtype=np.float64)
    if below.size == 0:
        return float("nan")
    width = at - below
    overlap = np.clip(np.minimum(at, hi) - np.maximum(below, lo), 0.0, None)
    point = ((below >= lo) & (below <= hi)).astype(np.float64)  # outcome outside the support: U = F(a) = F(a-1)
    return float(np.mean(np.where(width > 1e-12, overlap / np.maximum(width, 1e-12), point)))
