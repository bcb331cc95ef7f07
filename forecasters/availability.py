"""GPU availability of spot pools: the distribution of available GPUs per future interval, and a preemption hazard.

`AvailabilityForecaster` is persistence with honest uncertainty. For lead h it takes the h-step changes of the
available count over the most recent `window` resolved origins, adds them to the count now and clips to
`[0, capacity]`: that empirical distribution is the forecast (its median the point forecast, which is MAE-optimal,
its quantiles the bands). Counts are small integers that stay put most minutes, so the median change is almost
always zero: the value lies in the spread and the asymmetry (a full pool can only lose GPUs), not in moving the
point forecast — in line with Parcae's finding that ARIMA(1,1,0) on instance counts does not beat persistence
(Duan et al., NSDI'24). `arima_paths` gives that baseline.

The hazard is the preemption rate per GPU: removals over GPU-hours of exposure in the same window; a GPU up now
is preempted within one interval with probability `1 - exp(-hazard · interval)`.

With n < `min_samples` resolved origins at a lead, the empirical distribution of n changes is too thin to stand
alone, and it is shrunk towards binomial survival: each GPU up now survives h intervals with probability
`exp(-hazard · h · interval)`, no replacements. The forecast is the mixture n/`min_samples` · empirical +
(1 − n/`min_samples`) · binomial (named in the forecast), which is continuous with the empirical forecast at
`min_samples`. Binomial survival alone ignores that reclaimed GPUs come back and that reclaims come in waves;
mixed in, the changes seen carry both. Scored by ranked probability score from young traces (histories of 3–27
intervals from every 15th interval of Parcae's p3 and SpotServe's g4dn at 60 s and 300 s, and of three SkyPilot
16-node zones at 300 s; leads 1, 3 and 6: `bench/forecast_accuracy.py`), the mixture scores below binomial
survival and below persistence in all 21 cases: by 5–15 % on the 300 s grid of a live controller's cron (p3 at
lead 3: 3.84 against 4.35), by 1–6 % at 60 s.

Counts are integers, so a band between fixed quantiles covers whole steps of probability: the p10–p90 band holds
"no change" plus a step either side at +1 interval, 88 % on the Parcae p3 trace. `AvailabilityForecaster.band`
gives the adaptive band instead, by adaptive conformal inference (Gibbs & Candès, NeurIPS 2021): its miss rate α
starts at 1 − `band_level` and, as each earlier band's outcome resolves, moves by
`band_gamma` · (1 − `band_level` − miss), up to 1; the band is the distribution's [α/2, 1 − α/2] quantiles. Over
T resolved outcomes at one interval ahead its share of misses stays within (1 + γ)/(γ·T) of 1 − `band_level`
whatever the data, while α stays under that cap (their bound); a count that stays put more often than
`band_level` keeps it at the one-count band, which covers more. The planners read the distribution, not the band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binom

from core.forecast import Forecast
from forecasters.backtest import DEFAULT_LEVELS, monotone_quantiles, pit_coverage
from forecasters.series import clean_history


@dataclass(frozen=True)
class AvailabilityConfig:
    window: int = 240  # recent origins whose h-step changes form the distribution (4 h of 1-minute intervals)
    min_samples: int = 30  # fewer resolved origins: their changes shrunk towards binomial survival
    prior_hazard_per_hour: float = 0.1  # prior preemption rate, weighted as one GPU-hour of exposure
    band_level: float = 0.8  # target coverage of the adaptive band (`adaptive_bands`)
    band_gamma: float = 0.05  # step of its miss rate per resolved outcome
    band_origins: int = 720  # recent origins the forecaster's band adapts over (12 h of 1-minute intervals)


@dataclass(frozen=True, eq=False)
class AvailabilityForecast:
    """Distribution of available GPUs of one pool over `horizon` future intervals."""

    forecast: Forecast  # quantity "gpus", series "pool:<name>"; mean is the expectation, p50 the point forecast
    pmf: np.ndarray  # (horizon, capacity + 1): probability of each count per interval
    hazard_per_hour: float  # preemptions per GPU-hour, recent window
    preempt_prob_per_interval: float  # P(a GPU up now is removed within one interval)

    @property
    def capacity(self) -> int:
        return self.pmf.shape[1] - 1

    def quantile(self, q: float) -> np.ndarray:
        """(horizon,) count quantiles read off the pmf (the smallest count whose CDF reaches q)."""
        cdf = np.cumsum(self.pmf, axis=1)
        return np.argmax(cdf >= q - 1e-12, axis=1).astype(np.float64)


class AvailabilityForecaster:
    """Empirical h-step change distribution around the current count (see the module docstring)."""

    name = "availability"

    def __init__(self, *, pool: str, capacity: int | None = None, config: AvailabilityConfig = AvailabilityConfig()):
        self.pool = pool
        self.capacity = capacity
        self.config = config
        self._y = np.zeros(0)
        self._interval_s = 60.0
        self._start_s = 0.0
        self._hazard = config.prior_hazard_per_hour

    def fit(self, history: np.ndarray, *, interval_s: float, start_s: float = 0.0,
            removals: np.ndarray | None = None) -> None:
        """Learn from GPU counts sampled every `interval_s` (oldest first). `removals` — times (s, same clock as
        `start_s`) of single-GPU removals — sharpen the hazard; without them count drops stand in for removals."""
        self._y = np.round(clean_history(history, series=f"pool:{self.pool}").values)
        self._interval_s, self._start_s = float(interval_s), float(start_s)
        if self.capacity is None:
            self.capacity = int(self._y.max())
        self._hazard = self._estimate_hazard(removals)

    def _estimate_hazard(self, removals: np.ndarray | None) -> float:
        """Removals per GPU-hour in the recent window, with a prior worth one GPU-hour at the prior rate (a gamma
        prior), so that a short history without removals does not claim GPUs are never preempted."""
        recent = self._y[-self.config.window:]
        exposure_h = float(recent.sum()) * self._interval_s / 3600.0
        window_start = self._start_s + (len(self._y) - len(recent)) * self._interval_s
        if removals is not None:
            end = self._start_s + len(self._y) * self._interval_s
            count = int(np.sum((removals >= window_start) & (removals < end)))
        else:
            count = int(-np.minimum(np.diff(recent), 0).sum())
        return (count + self.config.prior_hazard_per_hour) / (exposure_h + 1.0)

    @property
    def hazard_per_hour(self) -> float:
        return self._hazard

    def change_samples(self, lead: int) -> np.ndarray:
        """h-step changes of the most recent `window` resolved origins (empty if none)."""
        y = self._y
        if len(y) <= lead:
            return np.zeros(0)
        changes = y[lead:] - y[:-lead]
        return changes[-self.config.window:]

    def survival_pmf(self, lead: int) -> np.ndarray:
        """(capacity + 1,) binomial survival at `lead` intervals: each GPU up now stays with probability
        exp(-hazard · lead · interval), none comes back (the prior a young trace's changes are shrunk towards)."""
        cap = int(self.capacity or 0)
        now = int(np.clip(self._y[-1], 0, cap))
        return binom.pmf(np.arange(cap + 1), now, np.exp(-self._hazard * lead * self._interval_s / 3600.0))

    def distribution(self, horizon: int, quantiles: Sequence[float] = DEFAULT_LEVELS) -> AvailabilityForecast:
        """Per-interval distribution of available GPUs for the next `horizon` intervals."""
        if len(self._y) == 0:
            raise RuntimeError("call fit() before forecasting")
        cap = int(self.capacity or 0)
        now = int(np.clip(self._y[-1], 0, cap))
        pmf = np.zeros((horizon, cap + 1))
        fallback = None
        for h in range(1, horizon + 1):
            samples = self.change_samples(h)
            empirical = np.bincount(np.clip(now + samples, 0, cap).astype(np.int64),
                                    minlength=cap + 1) / max(samples.size, 1)
            weight = min(samples.size / self.config.min_samples, 1.0)
            if weight < 1.0:
                empirical = weight * empirical + (1.0 - weight) * self.survival_pmf(h)
                fallback = (f"{samples.size} resolved origins at lead {h} < {self.config.min_samples}: their changes "
                            f"(weight {weight:.2f}) mixed with binomial survival of the {now} GPUs up now at "
                            f"{self._hazard:.3f} preemptions per GPU-hour")
            pmf[h - 1] = empirical
        return self._package(pmf, quantiles, fallback)

    def _package(self, pmf: np.ndarray, quantiles: Sequence[float], fallback: str | None) -> AvailabilityForecast:
        support = np.arange(pmf.shape[1])
        cdf = np.cumsum(pmf, axis=1)
        bands = monotone_quantiles({float(q): np.argmax(cdf >= q - 1e-12, axis=1).astype(float) for q in quantiles})
        forecast = Forecast(
            series=f"pool:{self.pool}", quantity="gpus", interval_s=self._interval_s,
            start_s=self._start_s + len(self._y) * self._interval_s, mean=tuple(map(float, pmf @ support)),
            quantiles={q: tuple(map(float, v)) for q, v in bands.items()},
            method="empirical_change+binomial_survival" if fallback else "empirical_change", fallback_reason=fallback,
        )
        p_int = 1.0 - float(np.exp(-self._hazard * self._interval_s / 3600.0))
        return AvailabilityForecast(forecast, pmf, self._hazard, p_int)

    def forecast(self, horizon: int, quantiles: Sequence[float] = DEFAULT_LEVELS) -> Forecast:
        """`core.protocols.Forecaster`: the distribution's summary as a `Forecast` of GPUs."""
        return self.distribution(horizon, quantiles).forecast

    def band(self, horizon: int) -> np.ndarray:
        """(horizon, 2): the adaptive `band_level` band of available GPUs per future interval, its level learned
        from the misses of the bands it would have given over the last `band_origins` origins."""
        if len(self._y) == 0:
            raise RuntimeError("call fit() before forecasting")
        out = np.empty((horizon, 2))
        start = max(len(self._y) - self.config.band_origins, 0)
        for h in range(1, horizon + 1):
            lo, hi = adaptive_bands(self._y, h, capacity=int(self.capacity or 0), config=self.config, start=start)
            out[h - 1] = lo[-1], hi[-1]
        return out


def rolling_change_quantiles(y: np.ndarray, lead: int, levels: Sequence[float], *, window: int,
                             min_samples: int, capacity: int) -> dict[float, np.ndarray]:
    """Backtest of `AvailabilityForecaster` at one lead: quantiles of the forecast made at every origin of `y`
    from the changes resolved by then (the same rule as `distribution`, vectorised with pandas rolling windows).

    Origins with fewer than `min_samples` resolved changes get the last value (persistence) at every level.
    """
    y = np.asarray(y, dtype=np.float64)
    change = pd.Series(np.r_[y[lead:] - y[:-lead], np.full(lead, np.nan)]).shift(lead)
    out = {}
    for q in levels:
        roll = change.rolling(window, min_periods=min_samples).quantile(q, interpolation="linear")
        out[float(q)] = np.clip(y + roll.fillna(0.0).to_numpy(), 0, capacity)
    return out


def arima_paths(y: np.ndarray, max_lead: int, *, first_origin: int, refit_every: int = 10,
                order: tuple[int, int, int] = (1, 1, 0), min_fit: int = 30) -> np.ndarray:
    """Baseline (Parcae): ARIMA on the counts, refitted on all data before each block of `refit_every` origins.

    Returns (len(y), max_lead) forecasts from every origin; persistence where fewer than `min_fit` points exist
    or the fit fails (a window without any change)."""
    from forecasters.methods import MethodFailed
    from forecasters.statmethods import Sarimax

    y = np.asarray(y, dtype=np.float64)
    out = np.repeat(y[:, None], max_lead, axis=1)
    for block in range(first_origin, len(y), refit_every):
        if block + 1 < min_fit:
            continue
        try:
            fitted = Sarimax(order=order, min_history=min_fit).fit(y[: block + 1])
        except MethodFailed:
            continue
        stop = min(block + refit_every, len(y))
        out[block:stop] = fitted.paths(y[:stop], max_lead)[block:stop]
    return out


@dataclass(frozen=True)
class AvailabilityScore:
    """Backtest of one availability method at one lead (counts of GPUs)."""

    method: str
    lead: int
    mae: float
    wape: float
    coverage_p10_p90: float | None  # None for point-only baselines
    num_origins: int
    # Calibration of the whole distribution: expected share of randomised PITs in [0.1, 0.9] (80 % when
    # calibrated; `backtest.pit_coverage`). None for point-only baselines.
    pit_coverage_p10_p90: float | None = None
    width_p10_p90: float | None = None  # mean width of the p10–p90 band (GPUs)
    coverage_adaptive: float | None = None  # the adaptive band's coverage (`adaptive_bands`; target band_level)
    width_adaptive: float | None = None


def backtest_availability(counts: np.ndarray, leads: Sequence[int], *, capacity: int, first_origin: int = 10,
                          config: AvailabilityConfig = AvailabilityConfig()) -> list[AvailabilityScore]:
    """Rolling-origin backtest from `first_origin` of the empirical-change forecaster (p50 as the point forecast,
    p10–p90 band) beside persistence and ARIMA(1,1,0), all on the same origins."""
    y = np.asarray(counts, dtype=np.float64)
    arima = arima_paths(y, max(leads), first_origin=first_origin)
    out = []
    for h in leads:
        origins = np.arange(first_origin, len(y) - h)
        actual = y[origins + h]
        bands = rolling_change_quantiles(y, h, (0.1, 0.5, 0.9), window=config.window,
                                         min_samples=config.min_samples, capacity=capacity)
        inside = (actual >= bands[0.1][origins]) & (actual <= bands[0.9][origins])
        below, at = change_cdf(y, h, origins, capacity=capacity, config=config)
        lo, hi = adaptive_bands(y, h, capacity=capacity, config=config, start=first_origin)
        bands_of = {"empirical_change": (float(np.mean(inside)), pit_coverage(below, at, 0.1, 0.9),
                                         float(np.mean(bands[0.9][origins] - bands[0.1][origins])),
                                         float(np.mean((actual >= lo[origins]) & (actual <= hi[origins]))),
                                         float(np.mean(hi[origins] - lo[origins])))}
        points = {"empirical_change": bands[0.5][origins], "persistence": y[origins],
                  "arima(1,1,0)": arima[origins, h - 1]}
        for name, point in points.items():
            err = np.abs(point - actual)
            coverage, pit, width, adaptive, adaptive_width = bands_of.get(name, (None,) * 5)
            out.append(AvailabilityScore(name, h, float(err.mean()), float(err.sum() / max(actual.sum(), 1.0)),
                                         coverage, int(origins.size), pit, width, adaptive, adaptive_width))
    return out


def adaptive_bands(y: np.ndarray, lead: int, *, capacity: int, config: AvailabilityConfig = AvailabilityConfig(),
                   start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): the adaptive `band_level` band for `lead` intervals ahead made at every origin from `start` on
    (NaN before), each from the distribution `AvailabilityForecaster` gives there (module docstring).

    The miss rate starts at 1 − `band_level` at `start` and moves as each band's outcome resolves (`lead` origins
    later): a band that missed lowers it by γ·`band_level` (the next bands widen), one that held raises it by
    γ·(1 − `band_level`), up to 1. A rate at or below 0 gives the whole range [0, capacity]; at 1, the median."""
    y = np.asarray(y, dtype=np.float64)
    change = y[lead:] - y[:-lead]
    lo, hi = np.full(len(y), np.nan), np.full(len(y), np.nan)
    target = 1.0 - config.band_level
    alpha, missed = target, np.zeros(len(y), dtype=bool)
    for t in range(start, len(y)):
        if t - lead >= start:  # capped at 1 (the median alone), so a count that stays put for hours does not
            # pile up a rate that the misses of a later volatile hour would take as long to bring down
            alpha = min(alpha + config.band_gamma * (target - missed[t - lead]), 1.0)
        if alpha <= 0:
            lo[t], hi[t] = 0.0, float(capacity)
        else:
            values = np.sort(_predictive(y, change, lead, t, capacity=capacity, config=config))
            lo[t] = values[_inverse_cdf_rank(values.size, alpha / 2)]
            hi[t] = values[_inverse_cdf_rank(values.size, 1 - alpha / 2)]
        if t + lead < len(y):
            missed[t] = not lo[t] <= y[t + lead] <= hi[t]
    return lo, hi


def _inverse_cdf_rank(n: int, q: float) -> int:
    """Index into n sorted values of the smallest whose empirical CDF reaches q."""
    return min(max(math.ceil(q * n - 1e-9) - 1, 0), n - 1)


def _predictive(y: np.ndarray, change: np.ndarray, lead: int, t: int, *, capacity: int,
                config: AvailabilityConfig) -> np.ndarray:
    """Samples of the count `lead` intervals after origin t as `AvailabilityForecaster` sees it there: the count
    now plus the h-step changes resolved by then (at most `window`), clipped to [0, capacity]; the count now alone
    with fewer than `min_samples` of them (`change[s]` resolves at origin s + lead)."""
    resolved = change[max(t - lead - config.window + 1, 0): max(t - lead + 1, 0)]
    return np.clip(y[t] + resolved, 0, capacity) if resolved.size >= config.min_samples else y[t:t + 1]


def change_cdf(y: np.ndarray, lead: int, origins: np.ndarray, *, capacity: int,
               config: AvailabilityConfig = AvailabilityConfig()) -> tuple[np.ndarray, np.ndarray]:
    """`(F(a - 1), F(a))` at every origin, where `a` is the count `lead` intervals later and `F` the predictive CDF
    of `AvailabilityForecaster` there: the count now plus the h-step changes resolved by then (at most `window`),
    clipped to `[0, capacity]`. Origins with fewer than `min_samples` resolved changes forecast a point mass at
    the count now (as the backtest's bands do)."""
    y = np.asarray(y, dtype=np.float64)
    change = y[lead:] - y[:-lead]
    below, at = np.empty(len(origins)), np.empty(len(origins))
    for i, t in enumerate(origins):
        values = _predictive(y, change, lead, int(t), capacity=capacity, config=config)
        actual = y[t + lead]
        below[i], at[i] = np.mean(values <= actual - 1), np.mean(values <= actual)
    return below, at
