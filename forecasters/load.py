"""Load forecasters: one series of counts per interval → `core.forecast.Forecast` with quantiles.

`LoadForecaster` implements `core.protocols.Forecaster`. `fit` chooses a method per series by a rolling-origin
backtest on WAPE (`forecasters.selection`); `forecast` returns the point forecast, conformal quantiles and the
backtest that justified the method; `update` is the cheap refit of a replanning cycle (same method and
parameters, new data, recalibrated quantiles). `fit_many` fits many series on several processes.

Histories that cannot support a backtest still get a forecast, with the fallback named:

- all zeros → method `zeros`, quantiles from a Poisson rate of 3/n per interval (the "rule of three" upper
  bound on a rate never observed in n intervals);
- shorter than `LoadConfig.min_backtest` → method `recent_mean`, Poisson quantiles around the mean of the
  last three intervals (arrival counts of a steady rate are Poisson);
- gaps (NaN: intervals without data) are carried forward from the last observed value and said so, and the
  backtest neither scores nor calibrates on them; `paths` carries gaps forward the same way, so a forecast made
  after a collection outage starts from the last demand seen, not from zero. Negative or infinite counts raise
  `InputError` naming the series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import poisson

from core.forecast import Forecast
from forecasters.backtest import DEFAULT_LEVELS, calibrate, monotone_quantiles
from forecasters.methods import single_threaded_blas
from forecasters.selection import DEFAULT_CONFIG, LoadConfig, Selection, select
from forecasters.series import carry_forward, clean_history, with_gaps

Quantity = Literal["requests", "tokens", "gpus"]


@dataclass(frozen=True)
class Fallback:
    """What a history too poor for a backtest gets instead of a selected method."""

    method: str
    reason: str
    rate: float  # Poisson mean per interval that sets the quantiles
    point: float  # point forecast per interval


def poisson_quantiles(mean: np.ndarray, levels: Sequence[float]) -> dict[float, np.ndarray]:
    """Quantiles of Poisson counts with the given means (0 where the mean is 0)."""
    mean = np.asarray(mean, dtype=np.float64)
    return monotone_quantiles({q: np.where(mean > 0, poisson.ppf(q, np.maximum(mean, 1e-12)), 0.0) for q in levels})


def recent_mean(y: np.ndarray, span: int = 3) -> np.ndarray:
    """Mean of the last `span` values (fewer at the start) at every index."""
    csum = np.cumsum(np.concatenate([[0.0], y]))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - span, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def fallback_for(y: np.ndarray, config: LoadConfig) -> Fallback | None:
    """The fallback a clean history needs, or None when it supports a backtest."""
    n = len(y)
    if not np.any(y):
        return Fallback("zeros", f"all {n} intervals are zero: no demand seen; quantiles from a Poisson rate of "
                        f"3/{n} per interval (rule of three)", 3.0 / n, 0.0)
    if n < config.min_backtest:
        recent = float(np.mean(y[-3:]))
        return Fallback("recent_mean", f"history of {n} intervals is shorter than the {config.min_backtest} a "
                        "backtest needs; Poisson quantiles around the mean of the last 3 intervals", recent, recent)
    return None


class LoadForecaster:
    """Forecasts one series of counts per interval (requests, tokens or GPUs). See the module docstring."""

    name = "load"

    def __init__(self, *, series: str = "series", quantity: Quantity = "requests",
                 config: LoadConfig = DEFAULT_CONFIG) -> None:
        self.series = series
        self.quantity: Quantity = quantity
        self.config = config
        self.selection: Selection | None = None
        self.fallback: Fallback | None = None
        self.note: str | None = None  # repairs made to the history (gaps filled)
        self._y = np.zeros(0)
        self._missing = np.zeros(0, dtype=bool)  # intervals of `_y` without data (carried forward)
        self._last: np.ndarray | None = None  # forecasts from the last origin of `_y`, when already computed
        self._interval_s = 1.0
        self._start_s = 0.0

    # -- fitting ---------------------------------------------------------------------------------------------------
    def fit(self, history: np.ndarray, *, interval_s: float, start_s: float = 0.0,
            score_coverage: bool = False) -> None:
        """Select, fit and calibrate a method on `history` (oldest first; `start_s` is its first interval's start)."""
        self._set_history(history, interval_s, start_s)
        self.fallback = fallback_for(self._y, self.config)
        self.selection = None
        if self.fallback is None:
            self.selection = select(self._y, interval_s=interval_s, config=self.config, score_coverage=score_coverage,
                                    missing=self._missing)

    def update(self, history: np.ndarray, *, start_s: float | None = None) -> None:
        """Cheap refit for a replanning cycle: keep the method and its parameters, filter the new history, and
        recalibrate the quantiles on its most recent residuals. `history` must start where the fitted one did
        (seasonal states are anchored there); a fit that was a fallback is redone in full."""
        start = self._start_s if start_s is None else start_s
        if self.selection is None or not np.isclose(start, self._start_s) or len(history) < len(self._y):
            self.fit(history, interval_s=self._interval_s, start_s=start)
            return
        self._set_history(history, self._interval_s, start)
        if not np.any(self._y):
            self.fallback, self.selection = fallback_for(self._y, self.config), None
            return
        sel = self.selection
        paths = self.paths(self._y, self.config.max_lead)
        window = self.config.calibration_window
        first = max(len(self._y) - window - self.config.max_lead - 1, 0)
        calibration = calibrate(paths, with_gaps(self._y, self._missing), first, window=window,
                                floor=sel.calibration.floor)
        self.selection = Selection(sel.method, sel.fitted, sel.chosen, sel.scores, calibration, sel.first_origin,
                                   sel.skipped)
        self._last = paths[-1]

    def _set_history(self, history: np.ndarray, interval_s: float, start_s: float) -> None:
        self._last = None
        clean = clean_history(history, series=self.series)
        self._y, self._missing, self.note = clean.values, clean.missing, clean.note
        self._interval_s, self._start_s = float(interval_s), float(start_s)

    # -- forecasting -----------------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        if self.fallback is not None:
            return self.fallback.method
        return self.selection.name if self.selection is not None else "unfitted"

    @property
    def history(self) -> np.ndarray:
        return self._y

    def paths(self, y: np.ndarray, max_lead: int) -> np.ndarray:
        """Forecasts from every origin of `y` with the fitted parameters (non-negative), shape (len(y), max_lead).

        Gaps in `y` (NaN) are carried forward first (causally: no origin sees a later value). A fallback stands in
        for what a refit would choose once data arrive: `zeros` (all zeros so far) carries the last value forward
        (still zero while nothing comes), `recent_mean` the mean of the last three."""
        y = carry_forward(y)
        if self.selection is None:
            level = y if self.fallback is None or self.fallback.method == "zeros" else recent_mean(y)
            return np.repeat(level[:, None], max_lead, axis=1)
        with single_threaded_blas():
            paths = self.selection.fitted.paths(y, max_lead)
        return np.maximum(np.nan_to_num(paths, nan=0.0, posinf=0.0), 0.0)

    def point_forecast(self, horizon: int) -> np.ndarray:
        if self.selection is None:
            return np.full(horizon, self.fallback.point if self.fallback else 0.0)
        if self._last is not None and len(self._last) >= horizon:
            return self._last[:horizon]  # computed by `update` for this very history
        return self.paths(self._y, horizon)[-1]

    def forecast(self, horizon: int, quantiles: Sequence[float] = DEFAULT_LEVELS) -> Forecast:
        """`horizon` intervals after the history's end: point forecast (`mean`), monotone quantiles, method,
        fallback reason and the backtest of the chosen method."""
        if self.selection is None and self.fallback is None:
            raise RuntimeError("call fit() before forecast()")
        point = self.point_forecast(horizon)
        if self.selection is not None:
            bands = self.selection.calibration.quantiles(point, quantiles)
            backtest = self.selection.chosen.score
        else:
            assert self.fallback is not None
            bands = poisson_quantiles(np.full(horizon, self.fallback.rate), quantiles)
            backtest = None
        return Forecast(
            series=self.series, quantity=self.quantity, interval_s=self._interval_s,
            start_s=self._start_s + len(self._y) * self._interval_s, mean=tuple(map(float, point)),
            quantiles={float(q): tuple(map(float, v)) for q, v in bands.items()}, method=self.method,
            fallback_reason=self._reason(), backtest=backtest,
        )

    def _reason(self) -> str | None:
        parts = [p for p in (self.fallback.reason if self.fallback else None, self.note) if p]
        return "; ".join(parts) or None


# -- many series -------------------------------------------------------------------------------------------------------
def _fit_one(args: tuple[np.ndarray, str, float, float, LoadConfig, Quantity]) -> LoadForecaster:
    history, name, interval_s, start_s, config, quantity = args
    f = LoadForecaster(series=name, quantity=quantity, config=config)
    f.fit(history, interval_s=interval_s, start_s=start_s)
    return f


def fit_many(
    histories: np.ndarray,
    names: Sequence[str],
    *,
    interval_s: float,
    start_s: float = 0.0,
    config: LoadConfig = DEFAULT_CONFIG,
    quantity: Quantity = "requests",
    workers: int = 1,
    on_done: Callable[[], None] | None = None,
) -> list[LoadForecaster]:
    """Fit one `LoadForecaster` per row of `histories` (S, T); with `workers > 1` on that many processes.

    Results come back in the order of `names`; the outcome does not depend on `workers`. `on_done` is called
    after each series (for progress bars).
    """
    histories = np.asarray(histories, dtype=np.float64)
    if histories.ndim != 2 or histories.shape[0] != len(names):
        raise ValueError(f"histories has shape {histories.shape}, expected ({len(names)}, T)")
    jobs = [(histories[i], names[i], interval_s, start_s, config, quantity) for i in range(len(names))]
    out: list[LoadForecaster] = []
    if workers <= 1 or len(jobs) < 2:
        results: Iterable[LoadForecaster] = map(_fit_one, jobs)
        for f in results:
            out.append(f)
            if on_done:
                on_done()
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for f in pool.map(_fit_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
            out.append(f)
            if on_done:
                on_done()
    return out
