"""Count series from any trace the project reads, for `fleetwise forecast` and the benchmarks.

- a request trace (Azure CSV, Mooncake JSONL, canonical CSV): requests per interval per model;
- a ServeGen folder: requests per interval per client (rate × window), windows summed into longer intervals;
- a rate profile (SpotServe's arrival-rates.csv): expected requests per interval (rate × interval);
- an availability trace (Parcae, SpotServe, SkyPilot): GPUs up at each interval boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from core.errors import InputError, NotFoundError
from forecasters.series import CountSeries, count_series
from workloads.availability import (
    AvailabilityTrace,
    is_availability_trace,
    or_availability,
    read_availability,
)
from workloads.formats import detect_format, read_trace
from workloads.rates import read_rate_profile
from workloads.servegen import ServeGenSet, read_servegen

SourceKind = Literal["requests", "servegen", "rates", "availability"]


@dataclass(frozen=True, eq=False)
class SeriesSource:
    """The series of one trace: `children` (one row per model, client or pool) and which one is asked for."""

    kind: SourceKind
    children: CountSeries
    selected: str | None  # a child's name, or None for the total over children
    trace: AvailabilityTrace | None = None

    @property
    def name(self) -> str:
        return self.selected if self.selected is not None else "total"

    def target(self) -> np.ndarray:
        """The series to forecast: the selected child, or the sum over children."""
        if self.selected is not None:
            return self.children.series(self.selected)
        return self.children.total()


def load_source(path: str | Path, *, interval_s: float, model: str | None = None) -> SeriesSource:
    """Read `path` into counts per `interval_s`; `model` picks one model, client (id or name) or pool."""
    if interval_s <= 0:
        raise InputError("--interval", interval_s, "a positive duration such as 10m or 600s")
    path = Path(path)
    if is_availability_trace(path):
        trace = read_availability(path)
        counts = trace.counts(interval_s).astype(np.float64)[None, :]
        series = CountSeries((trace.name,), counts, 0.0, interval_s)
        return SeriesSource("availability", series, _pick(model, series.names, "pool") or trace.name, trace)
    try:
        kind = detect_format(path)
    except InputError as exc:
        raise (or_availability(exc) if exc.where == "path" else exc) from None
    if kind == "servegen":
        series = servegen_counts(read_servegen(path), interval_s)
        return SeriesSource("servegen", series, _pick_client(model, series.names))
    if kind == "rates":
        profile = read_rate_profile(path)
        series = CountSeries((profile.name,), profile.counts(interval_s)[None, :], 0.0, interval_s)
        return SeriesSource("rates", series, _pick(model, series.names, "model") or profile.name)
    table = read_trace(path)
    series = count_series(table, interval_s, by="model")
    if len(series.names) == 1 and model is None:
        return SeriesSource("requests", series, series.names[0])
    return SeriesSource("requests", series, _pick(model, series.names, "model"))


def servegen_counts(sg: ServeGenSet, interval_s: float) -> CountSeries:
    """Requests per interval per client (rate × window length), `interval_s` a whole number of windows.

    Windows of a collection gap (`ServeGenSet.collection_gaps`: every client silent where the traffic around makes
    that improbable) hold no data, so they are NaN, not zero: a forecaster must not read an outage of the collector
    as demand falling to nothing. An interval of several windows counts its observed windows scaled up to the whole
    interval, and is NaN only when none of them was observed."""
    ratio = interval_s / sg.window_s
    k = round(ratio)
    if k < 1 or abs(ratio - k) > 1e-9:
        raise InputError("--interval", f"{interval_s:g}s", f"a whole number of ServeGen windows ({sg.window_s:g} s, "
                         f"e.g. {sg.window_s:g}s or {2 * sg.window_s:g}s)")
    per_window = sg.rate_per_s * sg.window_s
    gaps = sg.collection_gaps()
    whole = (per_window.shape[1] // k) * k
    blocks = per_window[:, :whole].reshape(per_window.shape[0], -1, k)
    observed = (~gaps[:whole]).reshape(-1, k)
    seen = observed.sum(axis=1)
    sums = blocks.sum(axis=2)  # windows of a gap are silent: they add nothing
    counts = np.where(seen > 0, sums * k / np.maximum(seen, 1), np.nan)
    return CountSeries(sg.model_names(), counts, sg.start_s, float(interval_s))


def _pick(name: str | None, known: tuple[str, ...], kind: str) -> str | None:
    if name is None:
        return None
    if name not in known:
        raise NotFoundError(kind, name, list(known))
    return name


def _pick_client(name: str | None, known: tuple[str, ...]) -> str | None:
    """A ServeGen client by full name (`m-large-c061`) or by id (`61`, `c061`)."""
    if name is None or name in known:
        return name
    digits = name.lstrip("c")
    if digits.isdigit():
        for full in known:
            if int(full.rsplit("-c", 1)[1]) == int(digits):
                return full
    raise NotFoundError("client", name, list(known))
