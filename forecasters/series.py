"""Count series: binning a request log into counts per interval, and cleaning a history before it is fitted.

Forecasters work on counts per interval (requests, tokens or GPUs), oldest first. `count_series` builds them from a
`RequestTable`; `clean_history` checks one series and repairs what can be repaired (gaps), refusing what cannot
(negative counts) with an `InputError` that names the series, the position and the value.

A gap is an interval with no data (NaN): a collection outage, not zero demand. Gaps are filled by carrying the last
observed value forward (`carry_forward`), never by interpolation: a forecast made at an origin inside or after a
gap must not see the value that ends it, or backtests would score knowledge no live forecaster had. What was
filled stays known (`CleanHistory.missing`) so that backtests neither score nor calibrate on filled values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core.errors import InputError
from core.requests import RequestTable


@dataclass(frozen=True, eq=False)
class CountSeries:
    """Counts per interval for several named series over the same intervals.

    `counts[i, t]` is the count of series `names[i]` in `[start_s + t·interval_s, start_s + (t+1)·interval_s)`.
    """

    names: tuple[str, ...]
    counts: np.ndarray  # (num_series, num_intervals) float64
    start_s: float
    interval_s: float

    @property
    def num_intervals(self) -> int:
        return int(self.counts.shape[1])

    @property
    def end_s(self) -> float:
        return self.start_s + self.num_intervals * self.interval_s

    def total(self) -> np.ndarray:
        """(T,) sum over series; NaN where any series has no data (the total is then unknown)."""
        return self.counts.sum(axis=0)

    def series(self, name: str) -> np.ndarray:
        return self.counts[self.names.index(name)]


def count_series(
    table: RequestTable,
    interval_s: float,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    by: Literal["model", "slo_class", "total"] = "model",
    weight: Literal["requests", "prompt_tokens", "output_tokens"] = "requests",
) -> CountSeries:
    """Bin arrivals into counts per interval, one series per model (or SLO class, or one 'total').

    The window is `[start_s, end_s)` (defaults: first arrival, last arrival) cut into whole intervals; a last
    partial interval is dropped so that every count covers a full interval. `weight` counts requests or sums
    their tokens. Every model of the table gets a series, even one with no requests in the window (all zeros).
    """
    if interval_s <= 0:
        raise InputError("interval_s", interval_s, "a positive number of seconds")
    start = table.start_s if start_s is None else float(start_s)
    end = (table.arrival_s[-1] if len(table) else start) if end_s is None else float(end_s)
    num = max(int(np.floor((end - start) / interval_s + 1e-9)), 0)
    if end_s is None and len(table):
        num += 1  # the interval holding the last arrival
    names, group = _grouping(table, by)
    bins = np.floor((table.arrival_s - start) / interval_s).astype(np.int64)
    keep = (bins >= 0) & (bins < num)
    weights = None if weight == "requests" else getattr(table, weight)[keep].astype(np.float64)
    flat = group[keep].astype(np.int64) * num + bins[keep]
    counts = np.bincount(flat, weights=weights, minlength=len(names) * num).astype(np.float64)
    return CountSeries(tuple(names), counts.reshape(len(names), num), start, float(interval_s))


def _grouping(table: RequestTable, by: str) -> tuple[list[str], np.ndarray]:
    if by == "model":
        return list(table.model_names), table.model_idx
    if by == "slo_class":
        return list(table.slo_names), table.slo_idx
    if by == "total":
        return ["total"], np.zeros(len(table), np.int64)
    raise InputError("by", by, "one of model, slo_class, total")


def carry_forward(y: np.ndarray) -> np.ndarray:
    """`y` with every NaN replaced by the last value before it (leading NaNs by the first value, the only choice).

    Causal: the value at `t` depends on `y[:t+1]` only (except for a leading gap). Rows of a 2-D array are
    filled independently. Returns `y` itself when it holds no NaN."""
    y = np.asarray(y, dtype=np.float64)
    if not np.isnan(y).any():
        return y
    frame = pd.DataFrame(np.atleast_2d(y).T)
    filled = frame.ffill().bfill().to_numpy().T
    return filled.reshape(y.shape)


def with_gaps(values: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    """`values` with NaN where `missing`: what backtests score against (`values` itself when nothing is missing)."""
    if missing is None or not np.any(missing):
        return values
    return np.where(missing, np.nan, values)


@dataclass(frozen=True, eq=False)
class CleanHistory:
    """A history ready to fit, with what was repaired."""

    values: np.ndarray  # float64, finite, non-negative
    missing: np.ndarray  # bool per interval: no data there, value carried forward
    note: str | None  # what was repaired, for the forecast's metadata

    @property
    def num_filled(self) -> int:
        return int(self.missing.sum())


def clean_history(history: np.ndarray | list[float], *, series: str = "series") -> CleanHistory:
    """Check a count history; fill gaps (NaN) by carrying values forward; refuse negatives, infinities, empties.

    Raises `InputError` naming `series`, the offending position and value. A history that is all gaps is refused
    too: there is nothing to forecast from.
    """
    y = np.asarray(history, dtype=np.float64).ravel()
    if y.size == 0:
        raise InputError(series, "[]", "a history of at least one interval", problem="the history is empty")
    if np.any(np.isinf(y)):
        i = int(np.flatnonzero(np.isinf(y))[0])
        raise InputError(f"{series}[{i}]", float(y[i]), "finite counts ≥ 0", problem="infinite count")
    finite = np.isfinite(y)
    negative = np.flatnonzero(finite & (y < 0))
    if negative.size:
        i = int(negative[0])
        raise InputError(
            f"{series}[{i}]", float(y[i]), "counts ≥ 0 (a count per interval cannot be negative)",
            problem=f"negative count {y[i]:g} ({negative.size} negative values in all)",
        )
    missing = ~finite
    if missing.all():
        raise InputError(series, f"{y.size} × NaN", "at least one observed interval",
                         problem="every interval is missing")
    if missing.any():
        note = (f"{int(missing.sum())} intervals without data (gaps) carried forward from the last observed value "
                "and left out of the backtest")
        return CleanHistory(carry_forward(y), missing, note)
    return CleanHistory(y, missing, None)
