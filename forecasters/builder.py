"""From a fleet, its request log and its GPU availability to a `ScenarioSet`, once per replanning cycle.

`ScenarioBuilder(fleet, config).build(history, now_s, seed=...)` bins the request log into counts per interval
(on a fixed grid of whole intervals ending at or before `now_s`), forecasts every served model (selecting methods
on the first call and every `reselect_every` calls, otherwise the cheap `LoadForecaster.update`), forecasts every
pool with an availability trace, samples stratified joint scenarios and reduces them. `build_scenarios(...)` does
the same in one call without keeping state.

Scenario time starts at the end of the last whole interval (`ScenarioSet.start_s ≤ now_s`). Availability traces
are read on the same clock as the request log: align them before passing them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from core.fleet import FleetSpec
from core.forecast import Forecast, ScenarioSet
from core.requests import RequestTable
from forecasters.availability import AvailabilityConfig, AvailabilityForecaster
from forecasters.lengths import ANY, EmpiricalLengths
from forecasters.load import LoadForecaster, fit_many
from forecasters.scenarios import (
    SAMPLING_LEVELS,
    ScenarioInputs,
    class_shares,
    reduce_scenarios,
    sample_scenarios,
)
from forecasters.selection import LoadConfig
from forecasters.series import count_series
from workloads.availability import AvailabilityTrace

# Placeholders until a model has served a request: a chat-like request (the Azure conversation trace averages
# ~1,150 prompt and ~210 output tokens; see the traces README).
DEFAULT_PROMPT_TOKENS = 1024.0
DEFAULT_OUTPUT_TOKENS = 256.0


@dataclass(frozen=True)
class BuilderConfig:
    interval_s: float = 600.0
    horizon: int = 6  # intervals
    num_scenarios: int = 64  # drawn
    reduce_to: int | None = 16  # kept after reduction (None: keep all)
    lookback: int = 2016  # intervals of history a fresh fit sees (14 days of 10 minutes); at most twice this later
    reselect_every: int = 144  # full method selection every this many builds; cheap updates in between
    workers: int = 1  # processes for full selections
    load: LoadConfig = field(default_factory=LoadConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)


class ScenarioBuilder:
    """Keeps the per-model forecasters between replanning cycles so that most cycles only refit cheaply."""

    def __init__(self, fleet: FleetSpec, config: BuilderConfig = BuilderConfig()) -> None:
        self.fleet = fleet
        self.config = config
        self.models = tuple(fleet.model_names)
        self._forecasters: list[LoadForecaster] = []
        self._anchor_s: float | None = None
        self._buffer = np.zeros((len(self.models), 0))  # whole intervals counted so far, from the anchor
        self._builds_since_select = 0
        self.pool_forecasters: list[AvailabilityForecaster] = []  # the last build's, one per pool with a trace

    def build(self, history: RequestTable, now_s: float, *, seed: int = 0,
              availability: Mapping[str, AvailabilityTrace] | None = None) -> ScenarioSet:
        """Scenarios for the `horizon` intervals after the last whole interval before `now_s`."""
        cfg = self.config
        end_s = np.floor(now_s / cfg.interval_s) * cfg.interval_s
        counts = self._counts(history, end_s)
        self._forecast_load(counts)
        demand = tuple(f.forecast(cfg.horizon, SAMPLING_LEVELS) for f in self._forecasters)
        assert self._anchor_s is not None
        inputs = ScenarioInputs(
            models=self.models, demand=demand, pools=tuple(p.name for p in self.fleet.pools),
            availability=self._availability(availability or {}, end_s), slo_classes=self._classes,
            class_share=self._class_share(history, end_s), **self._mean_lengths(history, end_s),
        )
        scenarios = sample_scenarios(inputs, num_scenarios=cfg.num_scenarios, seed=seed, start_s=float(end_s),
                                     interval_s=cfg.interval_s, horizon=cfg.horizon)
        if cfg.reduce_to is not None:
            scenarios = reduce_scenarios(scenarios, cfg.reduce_to, seed=seed)
        return scenarios

    @property
    def forecasters(self) -> list[LoadForecaster]:
        return list(self._forecasters)

    # -- load ------------------------------------------------------------------------------------------------------
    def _counts(self, history: RequestTable, end_s: float) -> np.ndarray:
        """(M, T) counts per fleet model on the builder's grid, from its anchor to `end_s`.

        Whole intervals already counted are kept in a buffer and only the newer ones are counted from `history`,
        so a caller may pass a sliding window of the request log (the controller reads the last day of
        telemetry) and the grid, the fitted parameters and the seasonal phase stay put. The buffer is re-anchored
        — and every model re-selected — once it holds twice the lookback.
        """
        cfg = self.config
        step = cfg.interval_s
        if self._anchor_s is None or (end_s - self._anchor_s) / step > 2 * cfg.lookback:
            first = np.ceil(history.start_s / step) * step if len(history) else end_s - step
            self._anchor_s = float(max(min(first, end_s - step), end_s - cfg.lookback * step))
            self._buffer = np.zeros((len(self.models), 0))
            self._forecasters = []  # a new grid: seasonal states and parameters must be re-estimated
        counted_to = self._anchor_s + self._buffer.shape[1] * step
        if end_s > counted_to:
            series = count_series(history, step, start_s=counted_to, end_s=end_s)
            fresh = np.zeros((len(self.models), series.num_intervals))
            for i, name in enumerate(self.models):
                if name in series.names:
                    fresh[i] = series.series(name)
            self._buffer = np.concatenate([self._buffer, fresh], axis=1)
        num = max(round((end_s - self._anchor_s) / step), 1)
        if self._buffer.shape[1] < num:  # now_s before the first whole interval: one empty interval to start from
            self._buffer = np.pad(self._buffer, ((0, 0), (0, num - self._buffer.shape[1])))
        return self._buffer[:, :num]

    def _forecast_load(self, counts: np.ndarray) -> None:
        cfg = self.config
        assert self._anchor_s is not None
        if not self._forecasters or self._builds_since_select >= cfg.reselect_every:
            self._forecasters = fit_many(counts, self.models, interval_s=cfg.interval_s, start_s=self._anchor_s,
                                         config=cfg.load, workers=cfg.workers)
            self._builds_since_select = 0
        else:
            for f, row in zip(self._forecasters, counts):
                f.update(row, start_s=self._anchor_s)
        self._builds_since_select += 1

    # -- availability ----------------------------------------------------------------------------------------------
    def _availability(self, traces: Mapping[str, AvailabilityTrace], end_s: float) -> tuple[Forecast | float, ...]:
        """A GPU forecast for every pool with a trace; the pool's size for the others."""
        cfg = self.config
        unknown = set(traces) - {p.name for p in self.fleet.pools}
        if unknown:
            raise ValueError(f"availability traces for unknown pools {sorted(unknown)}; pools: "
                             f"{[p.name for p in self.fleet.pools]}")
        out: list[Forecast | float] = []
        self.pool_forecasters = []
        for pool in self.fleet.pools:
            trace = traces.get(pool.name)
            if trace is None:
                out.append(float(pool.count))
                continue
            start = max(0.0, end_s - cfg.availability.window * cfg.interval_s * 4)
            counts = np.minimum(trace.counts(cfg.interval_s, start_s=start, end_s=end_s), pool.count)
            f = AvailabilityForecaster(pool=pool.name, capacity=pool.count, config=cfg.availability)
            f.fit(counts, interval_s=cfg.interval_s, start_s=start, removals=trace.removals())
            out.append(f.forecast(cfg.horizon, SAMPLING_LEVELS))
            self.pool_forecasters.append(f)
        return tuple(out)

    # -- classes and lengths ---------------------------------------------------------------------------------------
    @property
    def _classes(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.fleet.slo_classes)

    def _recent(self, history: RequestTable, end_s: float) -> RequestTable:
        assert self._anchor_s is not None
        return history.between(self._anchor_s, end_s)

    def _class_share(self, history: RequestTable, end_s: float) -> np.ndarray:
        classes = self._classes
        default = np.zeros(len(classes))
        mix = self.fleet.spec.workload.default_slo_mix
        if mix:
            default[:] = [mix.get(c, 0.0) for c in classes]
        if default.sum() <= 0:
            default[0] = 1.0
        recent = self._recent(history, end_s)
        counts = {}
        for m, name in enumerate(recent.model_names):
            rows = recent.model_idx == m
            per = np.array([np.sum(rows & (recent.slo_idx == recent.slo_names.index(c))) if c in recent.slo_names
                            else 0 for c in classes], dtype=float)
            counts[name] = per
        return class_shares(counts, self.models, len(classes), default / default.sum())

    def _mean_lengths(self, history: RequestTable, end_s: float) -> dict[str, np.ndarray]:
        recent = self._recent(history, end_s)
        if len(recent) == 0:
            m = len(self.models)
            return {"mean_prompt_tokens": np.full(m, DEFAULT_PROMPT_TOKENS),
                    "mean_output_tokens": np.full(m, DEFAULT_OUTPUT_TOKENS)}
        table = EmpiricalLengths.fit(recent)
        return {"mean_prompt_tokens": np.array([table.mean_prompt(m, ANY) for m in self.models]),
                "mean_output_tokens": np.array([table.mean_output(m, ANY) for m in self.models])}


def build_scenarios(
    fleet: FleetSpec,
    history: RequestTable,
    now_s: float,
    *,
    interval_s: float = 600.0,
    horizon: int = 6,
    num_scenarios: int = 64,
    reduce_to: int | None = 16,
    seed: int = 0,
    availability: Mapping[str, AvailabilityTrace] | None = None,
    workers: int = 1,
) -> ScenarioSet:
    """One-shot `ScenarioBuilder`: select methods, forecast, sample stratified scenarios and reduce them."""
    config = BuilderConfig(interval_s=interval_s, horizon=horizon, num_scenarios=num_scenarios,
                           reduce_to=reduce_to, workers=workers)
    return ScenarioBuilder(fleet, config).build(history, now_s, seed=seed, availability=availability)
