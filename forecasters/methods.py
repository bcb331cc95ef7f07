"""Forecasting methods for one count series: the contract, and the methods that need no statistics library.

A `Method` is a recipe (`fit(y) -> Fitted`); a `Fitted` holds the estimated parameters and forecasts from *any*
history with them. `Fitted.paths(y, max_lead)` returns the forecast made at every origin of `y` for every lead at
once — the rolling-origin backtest with fixed parameters, in one vectorised pass instead of one call per origin.
That is what makes selecting among methods for hundreds of series affordable.

Methods here: persistence, seasonal-naive, EWMA, and Croston (SBA) / TSB for intermittent series. Holt-Winters,
AR on differences and SARIMAX (statsmodels) live in `forecasters.statmethods`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter
from threadpoolctl import ThreadpoolController

_BLAS: ThreadpoolController | None = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run with single-threaded BLAS. The models here are tiny (a few states, a few coefficients): threads only
    contend, and on a busy two-core machine SARIMAX estimation ran ~10× slower with them. The controller is built
    once (scanning the loaded libraries costs a millisecond; limiting with it, microseconds)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


class MethodFailed(Exception):
    """A method could not be fitted to this series (too short, degenerate, did not converge)."""


class Fitted(ABC):
    """A method with its parameters estimated. Immutable; forecasts from any history with these parameters."""

    name: str

    @abstractmethod
    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        """(len(y), max_lead) float array: `[t, h-1]` forecasts `y[t+h]` from `y[:t+1]`. Never NaN."""

    def forecast(self, y: np.ndarray, horizon: int) -> np.ndarray:
        """(horizon,) forecasts of the `horizon` intervals after the end of `y`."""
        return self.paths(y, horizon)[-1]


class Method(ABC):
    """A forecasting recipe. `fit` raises `MethodFailed` when the series cannot support it."""

    name: str
    min_history: int = 1  # shortest history (intervals) the method is tried on

    @abstractmethod
    def fit(self, y: np.ndarray) -> Fitted: ...


def lead_grid(y: np.ndarray, max_lead: int) -> np.ndarray:
    """(len(y), max_lead) copy of `y` along leads: the shape every `paths` returns."""
    return np.repeat(np.asarray(y, dtype=np.float64)[:, None], max_lead, axis=1)


# -- persistence and seasonal-naive ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Persistence(Method, Fitted):
    """Last value carried forward: the baseline every method must beat."""

    name: str = "persistence"
    min_history: int = 1

    def fit(self, y: np.ndarray) -> Fitted:
        return self

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        return lead_grid(y, max_lead)


@dataclass(frozen=True)
class SeasonalNaive(Method, Fitted):
    """The value one season earlier: forecast of `y[t+h]` is `y[t + h - period·ceil(h/period)]`.

    At origins with less than a season of history the last value stands in.
    """

    period: int = 144

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"seasonal_naive({self.period})"

    @property
    def min_history(self) -> int:  # type: ignore[override]
        return 2 * self.period

    def fit(self, y: np.ndarray) -> Fitted:
        if len(y) < self.period:
            raise MethodFailed(f"needs a full season ({self.period} intervals), has {len(y)}")
        return self

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        out = lead_grid(y, max_lead)
        t = np.arange(len(y))
        for h in range(1, max_lead + 1):
            src = t + h - self.period * math.ceil(h / self.period)
            ok = src >= 0
            out[ok, h - 1] = y[src[ok]]
        return out


# -- exponential smoothing of the level ------------------------------------------------------------------------------
def ewma_levels(y: np.ndarray, alpha: float) -> np.ndarray:
    """Level `s[t] = α·y[t] + (1-α)·s[t-1]`, `s[0] = y[0]` (a first-order IIR filter)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return y
    return lfilter([alpha], [1.0, alpha - 1.0], y, zi=[(1.0 - alpha) * y[0]])[0]


@dataclass(frozen=True)
class FittedEWMA(Fitted):
    alpha: float

    @property
    def name(self) -> str:  # type: ignore[override]
        return "ewma"

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        return lead_grid(ewma_levels(y, self.alpha), max_lead)


@dataclass(frozen=True)
class EWMA(Method):
    """Simple exponential smoothing; α chosen from a grid by one-step squared error on the fit data."""

    alphas: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)
    name: str = "ewma"
    min_history: int = 3

    def fit(self, y: np.ndarray) -> Fitted:
        errors = [np.square(ewma_levels(y, a)[:-1] - y[1:]).sum() for a in self.alphas]
        return FittedEWMA(self.alphas[int(np.argmin(errors))])


# -- intermittent demand: Croston (SBA) and TSB ----------------------------------------------------------------------
def _smoothed_at_demands(y: np.ndarray, alpha: float, values: np.ndarray, initial: float) -> np.ndarray:
    """Smooth `values` (one per nonzero interval of `y`) and hold each estimate until the next demand.

    Returns one estimate per interval of `y`; before the first demand it is `initial`.
    """
    demand = np.flatnonzero(y > 0)
    out = np.full(len(y), initial, dtype=np.float64)
    if demand.size == 0:
        return out
    smoothed = lfilter([alpha], [1.0, alpha - 1.0], values, zi=[(1.0 - alpha) * initial])[0]
    # index of the most recent demand at or before each interval (-1: none yet)
    last = np.maximum.accumulate(np.where(y > 0, np.arange(len(y)), -1))
    seen = last >= 0
    out[seen] = smoothed[np.searchsorted(demand, last[seen])]
    return out


def _demand_stats(y: np.ndarray) -> tuple[float, float, float]:
    """(mean size of a demand, mean interval between demands, demand probability) on the fit data."""
    demand = np.flatnonzero(y > 0)
    if demand.size < 2:
        raise MethodFailed(f"needs at least two nonzero intervals, has {demand.size}")
    return float(y[demand].mean()), float(np.diff(demand).mean()), float(demand.size / len(y))


@dataclass(frozen=True)
class FittedCroston(Fitted):
    alpha: float
    size0: float
    interval0: float

    @property
    def name(self) -> str:  # type: ignore[override]
        return "croston"

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        demand = np.flatnonzero(y > 0)
        size = _smoothed_at_demands(y, self.alpha, y[demand], self.size0)
        gaps = np.diff(demand, prepend=demand[0] - self.interval0) if demand.size else demand.astype(np.float64)
        interval = _smoothed_at_demands(y, self.alpha, gaps.astype(np.float64), self.interval0)
        # Syntetos–Boylan approximation: Croston's ratio is biased upwards by about α/2.
        rate = (1.0 - self.alpha / 2.0) * size / np.maximum(interval, 1.0)
        rate[np.maximum.accumulate(y > 0) == 0] = 0.0
        return lead_grid(rate, max_lead)


@dataclass(frozen=True)
class FittedTSB(Fitted):
    alpha: float  # demand size smoothing
    beta: float  # demand probability smoothing (updated every interval, so it decays through long gaps)
    size0: float
    prob0: float

    @property
    def name(self) -> str:  # type: ignore[override]
        return "tsb"

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        size = _smoothed_at_demands(y, self.alpha, y[y > 0], self.size0)
        occurs = (y > 0).astype(np.float64)
        prob = lfilter([self.beta], [1.0, self.beta - 1.0], occurs, zi=[(1.0 - self.beta) * self.prob0])[0]
        return lead_grid(prob * size, max_lead)


_SMOOTHING_GRID = (0.05, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class Croston(Method):
    """Croston's method with the SBA bias correction, for intermittent series; α by one-step squared error."""

    name: str = "croston"
    min_history: int = 8

    def fit(self, y: np.ndarray) -> Fitted:
        size0, interval0, _ = _demand_stats(y)
        fits = [FittedCroston(a, size0, interval0) for a in _SMOOTHING_GRID]
        return _best_one_step(fits, y)


@dataclass(frozen=True)
class TSB(Method):
    """Teunter–Syntetos–Babai: demand probability and size smoothed separately, for series that may die out."""

    name: str = "tsb"
    min_history: int = 8

    def fit(self, y: np.ndarray) -> Fitted:
        size0, _, prob0 = _demand_stats(y)
        fits = [FittedTSB(a, b, size0, prob0) for a in _SMOOTHING_GRID for b in _SMOOTHING_GRID]
        return _best_one_step(fits, y)


def _best_one_step(fits: list[Fitted], y: np.ndarray) -> Fitted:
    """The candidate with the least one-step squared error (squared, not absolute: on an intermittent series the
    absolute error is minimised by forecasting zero, which would pick the least responsive parameters)."""
    errors = [np.square(f.paths(y, 1)[:-1, 0] - y[1:]).sum() for f in fits]
    return fits[int(np.argmin(errors))]
