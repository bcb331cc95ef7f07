"""Forecasting a sum of series (a model's clients, a fleet's models): directly, or bottom-up.

A total is often easier to forecast as the sum of its parts: clients with different dynamics (a steady stream, an
hourly batch job, a burst that decays) each get their own method, while the total mixes them into a series no
single method fits. `TotalForecaster` fits every child (`fit_many`) and the total itself, and backtests the sum
of the children's forecasts on the total over the same validation origins. Which one it forecasts with:

- `mode="bottom_up"` (default): the sum of the children's forecasts, always. It is coherent — the per-model
  forecasts the planner receives add up to the total that is reported — and it sees every child's dynamics.
  The direct forecast is still fitted and reported beside it.
- `mode="auto"`: bottom-up unless the direct forecast backtests better beyond chance (one-sided Diebold–Mariano
  test, as in `selection.choose`). On ServeGen m-large the direct forecast won the validation days and lost the
  test days (docs/forecasting.md), which is why this is not the default.
- `mode="direct"`: the total's own selected method.

Quantiles are calibrated on the total's residuals of the forecast used.

An interval in which any child has no data (NaN) leaves the total unknown there: every child and the total carry
their gaps forward (`forecasters.series.carry_forward`), and the total's backtest skips that interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from core.forecast import BacktestScore, Forecast
from forecasters.backtest import (
    DEFAULT_LEVELS,
    Calibration,
    calibrate,
    improvement_tstat,
    lead_weights,
    origins_for,
    scale_floor,
    wape,
)
from forecasters.load import LoadForecaster, Quantity, fit_many
from forecasters.selection import DEFAULT_CONFIG, LoadConfig, band_coverage, validation_split

TotalMode = Literal["bottom_up", "auto", "direct"]


class TotalForecaster:
    """Forecasts the sum of child series, bottom-up or directly (see the module docstring)."""

    name = "total"

    def __init__(self, *, series: str = "total", quantity: Quantity = "requests",
                 config: LoadConfig = DEFAULT_CONFIG, mode: TotalMode = "bottom_up") -> None:
        self.series = series
        self.mode: TotalMode = mode
        self.quantity: Quantity = quantity
        self.config = config
        self.children: list[LoadForecaster] = []
        self.direct = LoadForecaster(series=series, quantity=quantity, config=config)
        self.bottom_up_score: BacktestScore | None = None
        self.use_bottom_up = False
        self.validation_paths: np.ndarray | None = None  # bottom-up backtest forecasts of the total
        self._calibration: Calibration | None = None

    def fit(self, children: np.ndarray, *, interval_s: float, start_s: float = 0.0,
            names: Sequence[str] | None = None, workers: int = 1, score_coverage: bool = False,
            on_done: Callable[[], None] | None = None) -> None:
        """Fit on `children` (C, T) counts; `names` label the children (default: their index). `score_coverage`
        adds band coverage to the backtest scores; `on_done` is called after each child."""
        children = np.asarray(children, dtype=np.float64)
        names = list(names) if names is not None else [str(i) for i in range(children.shape[0])]
        self.children = fit_many(children, names, interval_s=interval_s, start_s=start_s, config=self.config,
                                 quantity=self.quantity, workers=workers, on_done=on_done)
        total = children.sum(axis=0)  # NaN where a child has no data: the total is unknown there
        self.direct.fit(total, interval_s=interval_s, start_s=start_s, score_coverage=score_coverage)
        self.use_bottom_up, self.bottom_up_score, self._calibration = False, None, None
        if self.direct.selection is None:
            return  # the total itself is too short or all zero: its fallback stands
        split = validation_split(len(total), self.config)
        paths = self._validation_paths(children)
        wapes = {h: wape(paths[o, h - 1], total[o + h])
                 for h in range(1, self.config.max_lead + 1) for o in [origins_for(len(total), split - 1, h)]}
        floor = scale_floor(total[:split])
        coverage = band_coverage(paths, total, split, floor, self.config) if score_coverage else {}
        self.bottom_up_score = BacktestScore(method="bottom_up", wape_by_lead=wapes, coverage=coverage,
                                             num_origins=len(origins_for(len(total), split - 1, 1)))
        self.validation_paths = paths
        self.use_bottom_up = self._prefer_bottom_up(paths, total, split)
        if self.use_bottom_up:
            self._calibration = calibrate(paths, total, split - 1, window=self.config.calibration_window,
                                          floor=floor)

    def _prefer_bottom_up(self, paths: np.ndarray, total: np.ndarray, split: int) -> bool:
        if self.mode != "auto":
            return self.mode == "bottom_up"
        assert self.direct.selection is not None and self.bottom_up_score is not None
        direct = self.direct.selection.chosen
        t = improvement_tstat(paths, direct.paths, total, split - 1)
        weights = lead_weights(self.config.max_lead)
        bottom_up = float(np.average(list(self.bottom_up_score.wape_by_lead.values()), weights=weights))
        direct_score = float(np.average(list(direct.score.wape_by_lead.values()), weights=weights))
        return not (direct_score < bottom_up and t > self.config.significance_z)

    def _validation_paths(self, children: np.ndarray) -> np.ndarray:
        """Sum of the children's backtest forecasts (each fitted on the older part of its history)."""
        lead = self.config.max_lead
        out = np.zeros((children.shape[1], lead))
        for child in self.children:
            if child.selection is not None:
                out += child.selection.chosen.paths
            else:
                out += child.paths(child.history, lead)
        return out

    @property
    def method(self) -> str:
        if not self.use_bottom_up:
            return self.direct.method
        mix = Counter(c.method.split("(")[0] for c in self.children).most_common(3)
        return "bottom_up[" + ", ".join(f"{name}×{k}" for name, k in mix) + (", …]" if len(self.children) > 3 else "]")

    def paths(self, children: np.ndarray, max_lead: int) -> np.ndarray:
        """Forecasts of the total from every origin of `children` (C, T) with the fitted parameters."""
        children = np.asarray(children, dtype=np.float64)
        if not self.use_bottom_up:
            return self.direct.paths(children.sum(axis=0), max_lead)
        out = np.zeros((children.shape[1], max_lead))
        for child, row in zip(self.children, children):
            out += child.paths(row, max_lead)
        return out

    @property
    def calibration(self) -> Calibration | None:
        if self.use_bottom_up:
            return self._calibration
        return self.direct.selection.calibration if self.direct.selection else None

    def forecast(self, horizon: int, quantiles: Sequence[float] = DEFAULT_LEVELS) -> Forecast:
        """The total's forecast; when bottom-up wins, the sum of the children's point forecasts with quantiles
        calibrated on the total's bottom-up residuals."""
        if not self.use_bottom_up:
            return self.direct.forecast(horizon, quantiles)
        assert self._calibration is not None and self.bottom_up_score is not None
        point = np.sum([c.point_forecast(horizon) for c in self.children], axis=0)
        bands = self._calibration.quantiles(point, quantiles)
        base = self.direct.forecast(horizon, quantiles)
        return base.model_copy(update={
            "mean": tuple(map(float, point)), "quantiles": {float(q): tuple(map(float, v)) for q, v in bands.items()},
            "method": self.method, "backtest": self.bottom_up_score,
        })
