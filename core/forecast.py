"""Forecasts (one series, with quantiles and the backtest that chose its method) and scenario sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class BacktestScore(BaseModel):
    """Rolling-origin backtest of one method on one series."""

    model_config = _FROZEN
    method: str
    wape_by_lead: dict[int, float] = Field(description="Lead (intervals ahead) → WAPE (Σ|e| / Σ|y|).")
    coverage: dict[str, float] = Field(default={}, description="Interval name (e.g. 'p10-p90') → empirical coverage.")
    num_origins: int = 0


class Forecast(BaseModel):
    """A forecast of one series over `len(mean)` future intervals; values are counts per interval.

    `quantiles` maps a quantile level in (0, 1) to one value per interval; levels are monotone (p10 ≤ p50 ≤ p90 ≤
    p99 at every interval). Never NaN: when the data do not support a method, `method` names the fallback and
    `fallback_reason` says why.
    """

    model_config = _FROZEN
    series: str = Field(description="What is forecast: a model name, 'total', or 'pool:<name>'.")
    quantity: Literal["requests", "tokens", "gpus"] = "requests"
    interval_s: Annotated[float, Field(gt=0)]
    start_s: float = Field(description="Start of the first forecast interval.")
    mean: tuple[float, ...]
    quantiles: dict[float, tuple[float, ...]]
    method: str
    fallback_reason: str | None = None
    backtest: BacktestScore | None = None

    @model_validator(mode="after")
    def _check(self) -> Forecast:
        n = len(self.mean)
        values = [self.mean, *self.quantiles.values()]
        if any(len(v) != n for v in values):
            raise ValueError("every quantile needs one value per interval, like mean")
        if any(not np.all(np.isfinite(v)) for v in values):
            raise ValueError("forecasts must not contain NaN or infinity")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError("quantile levels must lie in (0, 1)")
        return self

    @property
    def horizon(self) -> int:
        return len(self.mean)

    def quantile(self, q: float) -> np.ndarray:
        return np.asarray(self.quantiles[q], dtype=float)

    def rate_per_s(self) -> np.ndarray:
        return np.asarray(self.mean, dtype=float) / self.interval_s


@dataclass(frozen=True, eq=False)
class ScenarioSet:
    """S weighted joint scenarios of per-model demand and per-pool availability over T intervals.

    Arrays are read-only by convention. Weights sum to 1. `class_share[m, c]` splits model m's demand over SLO
    classes (rows sum to 1); lengths are the per-model means the planners size capacity with.
    """

    start_s: float
    interval_s: float
    models: tuple[str, ...]
    pools: tuple[str, ...]
    slo_classes: tuple[str, ...]
    weights: np.ndarray  # (S,) float64
    seeds: np.ndarray  # (S,) int64, the seed each scenario was drawn with
    demand_rps: np.ndarray  # (S, M, T) requests per second
    available_gpus: np.ndarray  # (S, P, T) GPUs available per pool
    class_share: np.ndarray  # (M, C)
    mean_prompt_tokens: np.ndarray  # (M,)
    mean_output_tokens: np.ndarray  # (M,)

    def __post_init__(self) -> None:
        s, m, t = self.demand_rps.shape
        checks = {
            "weights": (self.weights.shape, (s,)),
            "seeds": (self.seeds.shape, (s,)),
            "available_gpus": (self.available_gpus.shape, (s, len(self.pools), t)),
            "class_share": (self.class_share.shape, (m, len(self.slo_classes))),
            "mean_prompt_tokens": (self.mean_prompt_tokens.shape, (m,)),
            "mean_output_tokens": (self.mean_output_tokens.shape, (m,)),
        }
        if m != len(self.models):
            raise ValueError(f"demand_rps has {m} models, names list {len(self.models)}")
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"{name} has shape {got}, expected {want}")
        if s and not np.isclose(self.weights.sum(), 1.0):
            raise ValueError(f"scenario weights sum to {self.weights.sum():.6f}, expected 1")

    @property
    def num_scenarios(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_intervals(self) -> int:
        return int(self.demand_rps.shape[2])

    @property
    def horizon_s(self) -> float:
        return self.num_intervals * self.interval_s

    def expected_demand_rps(self) -> np.ndarray:
        """(M, T) probability-weighted mean demand."""
        return np.tensordot(self.weights, self.demand_rps, axes=1)

    def model_index(self, name: str) -> int:
        return self.models.index(name)
