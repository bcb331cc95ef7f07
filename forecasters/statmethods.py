"""Forecasting methods estimated with statsmodels: Holt-Winters / ETS, AR on differences, and SARIMAX.

Each `fit` estimates parameters with statsmodels on the fit data only; each `Fitted.paths` then runs the model's
own filter over any history with those parameters fixed and reads the h-step forecasts from every origin off the
filtered components (Holt-Winters: level, trend, season; SARIMAX: the Kalman filter's predicted states), so the
rolling-origin backtest costs one filter pass, not one fit per origin. See `methods` for the contract.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from forecasters.methods import Fitted, Method, MethodFailed, lead_grid, single_threaded_blas


@contextmanager
def _quiet() -> Iterator[None]:
    """Around every statsmodels call: no warnings (it warns on every non-converged or near-degenerate fit; the
    backtest judges fits, not warnings) and single-threaded BLAS (see `single_threaded_blas`)."""
    with warnings.catch_warnings(), single_threaded_blas():
        warnings.simplefilter("ignore")
        yield


# -- Holt-Winters (ETS with additive errors, damped additive trend, optional additive season) ------------------------
@dataclass(frozen=True)
class FittedHoltWinters(Fitted):
    period: int | None
    params: tuple[float, float, float, float]  # smoothing level, trend, season; damping
    initial: tuple[float, float, tuple[float, ...]]  # level, trend, seasonal states

    @property
    def name(self) -> str:  # type: ignore[override]
        return "holt_winters" if self.period else "holt"

    def _components(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        level0, trend0, season0 = self.initial
        model = ExponentialSmoothing(
            y, trend="add", damped_trend=True, seasonal="add" if self.period else None,
            seasonal_periods=self.period, initialization_method="known", initial_level=level0,
            initial_trend=trend0, initial_seasonal=np.asarray(season0) if self.period else None,
        )
        alpha, beta, gamma, phi = self.params
        with _quiet():
            res = model.fit(
                smoothing_level=alpha, smoothing_trend=beta, smoothing_seasonal=gamma if self.period else None,
                damping_trend=phi, optimized=False,
            )
        return np.asarray(res.level), np.asarray(res.trend), (np.asarray(res.season) if self.period else None)

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        level, trend, season = self._components(y)
        phi = self.params[3]
        damp = np.cumsum(phi ** np.arange(1, max_lead + 1))  # φ + φ² + … + φ^h
        out = level[:, None] + trend[:, None] * damp[None, :]
        if season is not None and self.period:
            t = np.arange(len(y))
            for h in range(1, max_lead + 1):
                src = t + h - self.period * math.ceil(h / self.period)
                # at origins younger than a season the seasonal state is the initial one
                out[:, h - 1] += np.where(src >= 0, season[np.maximum(src, 0)],
                                          np.asarray(self.initial[2])[src % self.period])
        return out


@dataclass(frozen=True)
class HoltWinters(Method):
    """Damped-trend exponential smoothing, with an additive season of `period` intervals when given."""

    period: int | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"holt_winters({self.period})" if self.period else "holt"

    @property
    def min_history(self) -> int:  # type: ignore[override]
        return 2 * self.period + 2 if self.period else 10

    def fit(self, y: np.ndarray) -> Fitted:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        if len(y) < self.min_history:
            raise MethodFailed(f"needs {self.min_history} intervals, has {len(y)}")
        try:
            with _quiet():
                res = ExponentialSmoothing(
                    y, trend="add", damped_trend=True, seasonal="add" if self.period else None,
                    seasonal_periods=self.period, initialization_method="heuristic" if self.period else "estimated",
                ).fit(use_brute=False)  # the brute-force start grid costs ~10× and changed SSE by < 0.01 % here
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise MethodFailed(str(exc)) from exc
        p = res.params
        gamma = p["smoothing_seasonal"] if self.period else 0.0  # statsmodels reports NaN without a season
        values = [p["smoothing_level"], p["smoothing_trend"], gamma, p["damping_trend"]]
        if not np.all(np.isfinite(values)):
            raise MethodFailed("non-finite smoothing parameters")
        season = tuple(np.asarray(p["initial_seasons"], dtype=float)) if self.period else ()
        return FittedHoltWinters(
            self.period, tuple(float(v) for v in values),  # type: ignore[arg-type]
            (float(p["initial_level"]), float(p["initial_trend"]), season),
        )


# -- AR on first differences (ARIMA(p,1,0) estimated by least squares) ----------------------------------------------
def lagged_differences(y: np.ndarray, lags: int) -> np.ndarray:
    """(len(y), lags): `[t, j]` = `y[t-j] - y[t-j-1]` (0 where it does not exist)."""
    d = np.diff(np.asarray(y, dtype=np.float64), prepend=y[0] if len(y) else 0.0)
    out = np.zeros((len(d), lags))
    for j in range(lags):
        out[j:, j] = d[: len(d) - j]
    return out


@dataclass(frozen=True)
class FittedARDiff(Fitted):
    phi: tuple[float, ...]  # AR coefficients of the differences, lag 1 first

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"ar_diff({len(self.phi)})"

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        phi = np.asarray(self.phi)
        recent = lagged_differences(y, len(phi))
        level = y.copy()
        out = np.empty((len(y), max_lead))
        for h in range(max_lead):  # iterate the AR recursion for every origin at once
            step = recent @ phi
            level = level + step
            out[:, h] = level
            recent = np.concatenate([step[:, None], recent[:, :-1]], axis=1)
        return out


@dataclass(frozen=True)
class ARDiff(Method):
    """AR(p) on first differences without drift, i.e. ARIMA(p,1,0) by conditional least squares (AutoReg).

    Catches short-term mean reversion of bursty series (a burst's decay, on/off cycles of a few intervals)."""

    lags: int = 12
    name: str = "ar_diff"

    @property
    def min_history(self) -> int:  # type: ignore[override]
        return 4 * self.lags + 2

    def fit(self, y: np.ndarray) -> Fitted:
        from statsmodels.tsa.ar_model import AutoReg

        d = np.diff(np.asarray(y, dtype=np.float64))
        if len(d) < 4 * self.lags or not np.any(d):
            raise MethodFailed(f"needs {4 * self.lags + 1} intervals with some change")
        with _quiet():
            res = AutoReg(d, lags=self.lags, trend="n").fit()
        phi = np.asarray(res.params, dtype=float)
        if not np.all(np.isfinite(phi)):
            raise MethodFailed("non-finite AR coefficients")
        return FittedARDiff(tuple(phi))


# -- SARIMAX -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FittedSarimax(Fitted):
    order: tuple[int, int, int]
    params: tuple[float, ...]

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"sarimax{self.order}".replace(" ", "")

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        with _quiet():  # return_ssm: the bare filter output, without building a results object (10× cheaper)
            fr = SARIMAX(np.asarray(y, dtype=np.float64), order=self.order).filter(np.asarray(self.params),
                                                                                    return_ssm=True)
        transition, design = fr.transition[:, :, 0], fr.design[:, :, 0]
        state = fr.predicted_state[:, 1:]  # column t: state of t+1 predicted from y[:t+1]
        out = np.empty((len(y), max_lead))
        for h in range(max_lead):
            out[:, h] = (design @ state)[0]
            state = transition @ state
        return out if np.all(np.isfinite(out)) else lead_grid(y, max_lead)


@dataclass(frozen=True)
class Sarimax(Method):
    """ARIMA(p,d,q) by maximum likelihood (statsmodels SARIMAX), fitted on at most the last `max_fit` intervals
    (estimation cost grows with length; the parameters of a short-memory model settle well before that)."""

    order: tuple[int, int, int] = (1, 1, 1)
    max_fit: int = 1000
    min_history: int = 30

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"sarimax{self.order}".replace(" ", "")

    def fit(self, y: np.ndarray) -> Fitted:
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        if len(y) < self.min_history or not np.any(np.diff(y)):
            raise MethodFailed(f"needs {self.min_history} intervals with some change")
        try:
            with _quiet():
                res = SARIMAX(np.asarray(y[-self.max_fit:], dtype=np.float64), order=self.order).fit(
                    disp=False, cov_type="none", maxiter=50
                )
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise MethodFailed(str(exc)) from exc
        params = np.asarray(res.params, dtype=float)
        if not np.all(np.isfinite(params)):
            raise MethodFailed("non-finite SARIMAX parameters")
        return FittedSarimax(self.order, tuple(params))
