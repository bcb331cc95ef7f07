"""Rate profiles: arrival rates (requests per second) over consecutive intervals of a fixed length, with no
requests in them — SpotServe's per-minute `arrival-rates.csv`, or the per-minute rate a metrics system exports.

A profile is a CSV of non-negative numbers, all in one row (SpotServe) or one per line; the interval is not in
the file (60 s unless a workload YAML says `interval_s`). `synthesize_profile` turns it into requests: a
stationary renewal process per interval at that interval's rate and a given inter-arrival CV (1: Poisson),
lengths from a length model, all of one model.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.requests import RequestTable, max_requests
from workloads.lengths import LengthModel
from workloads.synthetic import gamma_requests

DEFAULT_INTERVAL_S = 60.0  # SpotServe's profiles are per minute
PROFILE_FORMAT = "a rate profile (.csv of requests/s per interval, in one row or one per line, e.g. SpotServe's " \
                 "arrival-rates.csv)"


@dataclass(frozen=True, eq=False)
class RateProfile:
    """`rates_per_s[i]` is the arrival rate over [i·interval_s, (i+1)·interval_s) from the profile's start."""

    name: str
    rates_per_s: np.ndarray  # (N,) float64 ≥ 0
    interval_s: float

    @property
    def duration_s(self) -> float:
        return float(self.rates_per_s.shape[0] * self.interval_s)

    @property
    def expected_requests(self) -> float:
        return float(self.rates_per_s.sum() * self.interval_s)

    def counts(self, interval_s: float) -> np.ndarray:
        """Expected requests per `interval_s`, a whole number of the profile's intervals (a trailing part dropped)."""
        ratio = interval_s / self.interval_s
        k = round(ratio)
        if k < 1 or abs(ratio - k) > 1e-9:
            raise InputError("--interval", f"{interval_s:g}s", f"a whole number of the rate profile's intervals "
                             f"({self.interval_s:g} s, e.g. {self.interval_s:g}s or {2 * self.interval_s:g}s)")
        whole = (self.rates_per_s.shape[0] // k) * k
        if whole == 0:
            raise InputError("--interval", f"{interval_s:g}s", f"at most the profile's length "
                             f"({self.duration_s:g} s)", problem=f"{self.name} holds less than one interval")
        return self.rates_per_s[:whole].reshape(-1, k).sum(axis=1) * self.interval_s


def _cells(path: Path, limit: int | None = None) -> list[list[str]]:
    with path.open(newline="") as fh:
        rows = []
        for row in csv.reader(fh):
            cells = [c.strip() for c in row]
            if any(cells):
                rows.append(cells)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def is_rate_profile(path: str | Path) -> bool:
    """Whether `path` is a .csv whose first lines are numbers only, in one row of three or more (a row of two is a
    Parcae node count) or one per line."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".csv":
        return False
    try:
        rows = _cells(p, limit=3)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if not rows or not all(_is_number(c) for row in rows for c in row):
        return False
    return (len(rows) == 1 and len(rows[0]) >= 3) or all(len(row) == 1 for row in rows)


def read_rate_profile(path: str | Path, *, interval_s: float = DEFAULT_INTERVAL_S) -> RateProfile:
    """Read a rate profile; a cell that is not a finite rate ≥ 0 is named by line and position."""
    p = Path(path)
    if not interval_s > 0 or not np.isfinite(interval_s):
        raise InputError("interval_s", interval_s, "a positive number of seconds per rate")
    if not p.is_file():
        raise InputError("path", str(p), PROFILE_FORMAT, problem=f"no such file: {p}")
    rows = _cells(p)
    if not rows:
        raise InputError(p.name, "empty file", PROFILE_FORMAT, problem="no rates")
    one_row = len(rows) == 1
    if not one_row and any(len(row) != 1 for row in rows):
        line = next(i for i, row in enumerate(rows, start=1) if len(row) != 1)
        raise InputError(f"{p.name}:{line}", ",".join(rows[line - 1])[:60], "one rate per line, or all in one row",
                         problem="several values on a line of a one-per-line profile")
    cells = rows[0] if one_row else [row[0] for row in rows]
    rates = np.empty(len(cells))
    for i, cell in enumerate(cells):
        where = f"{p.name}:1, value {i + 1}" if one_row else f"{p.name}:{i + 1}"
        try:
            rates[i] = float(cell)
        except ValueError:
            raise InputError(where, cell, "a rate in requests/s (a number ≥ 0)") from None
        if not np.isfinite(rates[i]) or rates[i] < 0:
            raise InputError(where, cell, "a rate in requests/s (a finite number ≥ 0)")
    return RateProfile(p.stem, rates, float(interval_s))


def synthesize_profile(
    profile: RateProfile,
    *,
    lengths: RequestTable | LengthModel,
    seed: int,
    model: str | None = None,
    cv: float = 1.0,
    slo_class: str = "default",
) -> RequestTable:
    """Requests whose arrivals follow `profile`: each interval a stationary renewal process (Gamma gaps of CV `cv`)
    at its rate, arrival_s from the profile's start, all of `model` (default: the profile's name) and `slo_class`.
    The same profile and seed always give the same table."""
    if not cv > 0 or not np.isfinite(cv):
        raise InputError("cv", cv, "an inter-arrival CV > 0 (1: Poisson)")
    if (expected := profile.expected_requests) > (limit := max_requests()):
        raise InputError("rates_per_s", expected, f"at most {limit:,} requests on this machine",
                         source=profile.name, problem=f"the profile makes {expected:.3g} requests")
    live = np.flatnonzero(profile.rates_per_s > 0)
    n = live.shape[0]
    return gamma_requests(np.zeros(n, np.int64), live * profile.interval_s, np.full(n, profile.interval_s),
                          profile.rates_per_s[live], np.full(n, float(cv)), model_names=(model or profile.name,),
                          lengths=lengths, seed=seed, slo_class=slo_class)
