"""ServeGen per-client rate series (Xiang et al., "ServeGen", arXiv 2505.09999) and arrivals synthesised from them.

A ServeGen folder (e.g. `language/m-large`) holds one `chunk-<client>-trace.csv` per client, no header, one row per
600 s window: `window_start_s, rate_req_per_s, cv, arrival_dist, param1, param2`. `arrival_dist` is the family
fitted to the window's inter-arrival gaps (`Gamma`: param1 = shape, param2 = scale; `Weibull`: param1 = shape,
param2 = scale); `0,0,,0,0` is a window without traffic.

`synthesize` turns the windows into requests: per (client, window), a stationary renewal process with the
window's family, moment-matched to the window's rate and CV (`workloads.arrivals`). docs/workloads.md shows how
the fitted parameters compare with the rate and CV columns and why the columns are trusted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.requests import RequestTable, max_requests
from workloads.arrivals import (
    FAMILY_NAMES,
    Family,
    Segments,
    empty_window_probability,
    equal_runs,
    moment_match,
    renewal_arrivals,
    weibull_cv,
)
from workloads.lengths import LengthModel, as_length_model
from workloads.tabular import numeric_column, raise_bad_value, read_csv_frame, warn_if_unsorted

SERVEGEN_COLUMNS = ("window_start_s", "rate_per_s", "cv", "arrival_dist", "param1", "param2")
_FMT = "window_start_s,rate_req_per_s,cv,arrival_dist,param1,param2 (e.g. 600,1.33,8.6,Weibull,0.375,0.397)"
_FILE = re.compile(r"^chunk-(\d+)-trace\.csv$")
_DTYPES = {"window_start_s": "float64", "rate_per_s": "float64", "cv": "float64", "arrival_dist": "category",
           "param1": "float64", "param2": "float64"}
WINDOWS_PER_CHUNK = 6  # synthesis works on aligned groups of windows, each with its own seeded generator
# A run of windows in which every client is silent is a collection gap when, at the rates and CVs of the windows
# around it, all clients would be silent in one window together with less than this probability.
GAP_MAX_PROBABILITY = 1e-6


@dataclass(frozen=True, eq=False)
class ServeGenSet:
    """The rate series of one ServeGen folder: C clients × W windows, all arrays numpy."""

    name: str  # folder name, e.g. "m-large"
    clients: np.ndarray  # (C,) int64 client ids, ascending
    window_s: float  # window length (600 s)
    window_start_s: np.ndarray  # (W,) float64, evenly spaced by window_s
    rate_per_s: np.ndarray  # (C, W) float64 requests per second (count / window_s)
    cv: np.ndarray  # (C, W) float64 coefficient of variation of the window's inter-arrival gaps
    family: np.ndarray  # (C, W) int8 codes into family_names (0: no traffic)
    param1: np.ndarray  # (C, W) float64 fitted shape
    param2: np.ndarray  # (C, W) float64 fitted scale (seconds)
    family_names: tuple[str, ...] = FAMILY_NAMES

    @property
    def num_clients(self) -> int:
        return int(self.clients.shape[0])

    @property
    def num_windows(self) -> int:
        return int(self.window_start_s.shape[0])

    @property
    def start_s(self) -> float:
        return float(self.window_start_s[0])

    @property
    def end_s(self) -> float:
        return float(self.window_start_s[-1] + self.window_s)

    def total_rate_per_s(self) -> np.ndarray:
        """(W,) the folder's rate per window: the sum over clients."""
        return self.rate_per_s.sum(axis=0)

    def collection_gaps(self, *, max_probability: float = GAP_MAX_PROBABILITY) -> np.ndarray:
        """(W,) bool: windows that hold no data rather than no demand.

        A maximal run of windows in which every client is silent is a gap when silence is implausible as traffic:
        with each client at the lower of its rates in the windows just before and after the run, and the higher of
        its two CVs, the probability that every client is silent in one window (`empty_window_probability`, a
        stationary Gamma renewal process per client, independent clients) is below `max_probability`. Bursty
        clients are silent often (CV 8 at 20 requests a window: 46 %), so the rule weighs each client's CV rather
        than counting requests. ServeGen's m-mid and m-small have such runs (1 to 23 windows; probabilities of
        10⁻¹⁶⁸ and less); a run at the start or end of the trace is not marked, since nothing bounds it."""
        silent = self.total_rate_per_s() <= 0
        gaps = np.zeros_like(silent)
        for is_silent, a, end in equal_runs(silent.astype(np.int8)):
            if not is_silent or a == 0 or end == len(silent):
                continue
            mean = np.minimum(self.rate_per_s[:, a - 1], self.rate_per_s[:, end]) * self.window_s
            cv = np.fmax(self.cv[:, a - 1], self.cv[:, end])
            log_p = float(np.sum(np.log(np.maximum(empty_window_probability(mean, cv), 1e-300))))
            if log_p < np.log(max_probability):
                gaps[a:end] = True
        return gaps

    def expected_requests(self) -> float:
        """Σ rate × window length: how many requests the recorded windows hold."""
        return float(self.rate_per_s.sum() * self.window_s)

    def gap_params(self) -> tuple[np.ndarray, np.ndarray]:
        """(shape, scale) per (client, window), moment-matched to the rate and CV columns (see module docstring)."""
        return moment_match(self.family, self.rate_per_s, self.cv)

    def model_names(self, *, per_client: bool = True, prefix: str | None = None) -> tuple[str, ...]:
        """`{prefix}-c{client:03d}` per client, or the folder name (`prefix`) for the whole folder."""
        prefix = prefix or self.name
        return tuple(f"{prefix}-c{c:03d}" for c in self.clients) if per_client else (prefix,)

    def select(self, clients: np.ndarray | None = None) -> ServeGenSet:
        """The same set restricted to some client ids (kept in ascending order)."""
        if clients is None:
            return self
        rows = np.flatnonzero(np.isin(self.clients, clients))
        return replace(self, clients=self.clients[rows], rate_per_s=self.rate_per_s[rows], cv=self.cv[rows],
                       family=self.family[rows], param1=self.param1[rows], param2=self.param2[rows])


def is_servegen_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(_FILE.match(p.name) for p in path.iterdir())


def read_servegen(folder: str | Path) -> ServeGenSet:
    """Read every `chunk-<client>-trace.csv` of `folder`; all clients must share the same windows.

    Bad rows raise `InputError` at `file:line`; rows out of time order are sorted with a `TraceOrderWarning`.
    """
    folder = Path(folder)
    files = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _FILE.match(p.name))),
                   key=lambda item: item[0]) if folder.is_dir() else []
    if not files:
        raise InputError("folder", str(folder), "a ServeGen folder holding chunk-<client>-trace.csv files")
    parsed = [_read_client(path) for _, path in files]
    starts = parsed[0][0]
    for (_, path), (other, *_rest) in zip(files, parsed, strict=True):
        if other.shape != starts.shape or not np.array_equal(other, starts):
            raise InputError("window_start_s", None, f"the same windows as {files[0][1].name} "
                             f"({starts.shape[0]} windows from {starts[0]:g} s)", source=str(path),
                             problem="the windows differ")
    window_s = _window_length(starts, files[0][1])
    stack = lambda k: np.stack([p[k] for p in parsed])
    return ServeGenSet(
        name=folder.name, clients=np.array([c for c, _ in files], np.int64), window_s=window_s,
        window_start_s=starts, rate_per_s=stack(1), cv=stack(2), family=stack(3).astype(np.int8),
        param1=stack(4), param2=stack(5),
    )


def _read_client(path: Path) -> tuple[np.ndarray, ...]:
    frame = read_csv_frame(path, columns=SERVEGEN_COLUMNS, header=False, fmt=_FMT, dtype=_DTYPES)
    num = {c: numeric_column(frame, c, source=path, first_line=1, min_value=0, expected="a number ≥ 0")
           for c in ("window_start_s", "rate_per_s", "cv", "param1", "param2")}
    live = num["rate_per_s"] > 0
    family = _family_codes(frame["arrival_dist"], live, path)
    bad = live & (num["cv"] <= 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise_bad_value(path, row + 1, "cv", frame["cv"].iloc[row], "> 0 in a window with traffic")
    warn_if_unsorted(num["window_start_s"], path)
    order = np.argsort(num["window_start_s"], kind="stable")
    return (num["window_start_s"][order], num["rate_per_s"][order], num["cv"][order], family[order],
            num["param1"][order], num["param2"][order])


def _family_codes(names: pd.Series, live: np.ndarray, path: Path) -> np.ndarray:
    known = {n: i for i, n in enumerate(FAMILY_NAMES) if n}
    cats = names.astype("category").cat
    lookup = np.array([known.get(str(c), Family.NONE) for c in cats.categories] + [Family.NONE], np.int8)
    codes = lookup[cats.codes.to_numpy()]  # code -1 (empty field) picks the trailing NONE
    bad = live & (codes == Family.NONE)
    if bad.any():
        row = int(np.argmax(bad))
        raise_bad_value(path, row + 1, "arrival_dist", names.iloc[row],
                        f"one of {', '.join(known)} in a window with traffic")
    codes[~live] = Family.NONE
    return codes


def _window_length(starts: np.ndarray, path: Path) -> float:
    if starts.shape[0] < 2:
        return 600.0
    steps = np.diff(starts)
    if steps[0] <= 0 or not np.allclose(steps, steps[0]):
        raise InputError("window_start_s", None, "evenly spaced, distinct window starts", source=str(path),
                         problem="windows are not evenly spaced")
    return float(steps[0])


def synthesize(
    sg: ServeGenSet,
    *,
    lengths: RequestTable | LengthModel,
    per_client: bool = True,
    seed: int,
    start_s: float | None = None,
    end_s: float | None = None,
    rate_scale: float = 1.0,
    model_prefix: str | None = None,
    slo_class: str = "default",
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> RequestTable:
    """Requests whose per-window arrivals follow `sg`: one model per client (`{folder}-c{client:03d}`) or one for
    the whole folder, lengths resampled jointly from `lengths`, all in `slo_class`.

    `[start_s, end_s)` selects source time (default: all windows; windows cut by the bounds are kept in part);
    arrival_s in the result is relative to `start_s`. `rate_scale` multiplies every window's rate (the CV is
    kept). The same seed and bounds always give the same table; groups of `WINDOWS_PER_CHUNK` windows aligned to
    the source have their own generator, so a slice aligned to those groups reproduces the full run's arrivals.
    `on_progress(done, total)` is called after each group of windows; `workers` threads generate groups in
    parallel (default: up to 4, one per CPU).
    """
    start_s = sg.start_s if start_s is None else float(start_s)
    end_s = sg.end_s if end_s is None else float(end_s)
    if not end_s > start_s:
        raise InputError("end_s", end_s, f"end_s must be greater than start_s ({start_s:g})")
    if rate_scale <= 0:
        raise InputError("rate_scale", rate_scale, "rate_scale must be > 0")
    length_model = as_length_model(lengths)
    shape, scale = sg.gap_params()
    first = max(int(np.floor((start_s - sg.start_s) / sg.window_s)), 0)
    last = min(int(np.ceil((end_s - sg.start_s) / sg.window_s)), sg.num_windows)
    chunks = range(first // WINDOWS_PER_CHUNK, -(-last // WINDOWS_PER_CHUNK))
    segments = [_segments(sg, np.arange(max(c * WINDOWS_PER_CHUNK, first), min((c + 1) * WINDOWS_PER_CHUNK, last)),
                          shape, scale, start_s, end_s, rate_scale) for c in chunks]
    expected = sum(float((g.rate_per_s * g.span_s).sum()) for g in segments)
    if not expected <= (limit := max_requests()):
        raise InputError("rate_per_s", expected, f"at most {limit:,} requests on this machine: synthesise a shorter "
                         "slice or at a lower rate scale", source=sg.name, problem=f"the rates of {start_s:g}–{end_s:g} s "
                         f"(× {rate_scale:g}) make {expected:.3g} requests")
    out = _Columns(_capacity(segments))

    def generate(chunk: int, segs: Segments) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([seed, chunk])  # per chunk: the result does not depend on the threads
        arrival_s, stream = renewal_arrivals(segs, rng, origin_s=start_s)
        return arrival_s, stream, *length_model.sample(rng, arrival_s.shape[0])

    # numpy releases the GIL in its generators and sorts, so chunks run in parallel threads; results are consumed
    # in chunk order, which keeps the output sorted.
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for done, (arrival_s, stream, prompt, output) in enumerate(pool.map(generate, chunks, segments), start=1):
            out.append(arrival_s, stream if per_client else 0, prompt, output)
            if on_progress is not None:
                on_progress(done, len(chunks))
    return out.table(sg.model_names(per_client=per_client, prefix=model_prefix), slo_class)


def _segments(sg: ServeGenSet, windows: np.ndarray, shape: np.ndarray, scale: np.ndarray, start_s: float,
              end_s: float, rate_scale: float) -> Segments:
    """One segment per (window, client) with traffic, window-major, cut to [start_s, end_s)."""
    rates = sg.rate_per_s[:, windows].T  # (w, C): window-major order
    w_idx, c_idx = np.nonzero(rates > 0)
    win = windows[w_idx]
    lo = np.maximum(sg.window_start_s[win], start_s)
    hi = np.minimum(sg.window_start_s[win] + sg.window_s, end_s)
    return Segments(
        stream=c_idx, start_s=lo, span_s=hi - lo, rate_per_s=rates[w_idx, c_idx] * rate_scale,
        family=sg.family[c_idx, win], shape=shape[c_idx, win], scale=scale[c_idx, win] / rate_scale,
    )


def _capacity(segments: list[Segments]) -> int:
    """Expected requests plus 8 standard deviations (Var[count] ≈ rate·span·cv² per segment)."""
    mean = sum(float((g.rate_per_s * g.span_s).sum()) for g in segments)
    var = sum(float((g.rate_per_s * g.span_s * _cv2(g)).sum()) for g in segments)
    return int(mean + 8 * np.sqrt(var) + 1024)


def _cv2(segs: Segments) -> np.ndarray:
    """Squared CV of each segment's gap distribution, from its moment-matched parameters."""
    weibull = segs.family == Family.WEIBULL
    cv2 = np.where(segs.family == Family.GAMMA, 1.0 / segs.shape, 1.0)
    cv2[weibull] = weibull_cv(segs.shape[weibull]) ** 2
    return cv2


class _Columns:
    """The result's columns, preallocated from the expected count and filled chunk by chunk (grown when a chunk
    overflows): no list of chunks and no final concatenation, so peak memory is about the result itself."""

    def __init__(self, capacity: int) -> None:
        self.size = 0
        self.arrival_s = np.empty(capacity, np.float64)
        self.model_idx = np.empty(capacity, np.int32)
        self.prompt_tokens = np.empty(capacity, np.int32)
        self.output_tokens = np.empty(capacity, np.int32)

    def append(self, arrival_s: np.ndarray, model_idx: np.ndarray | int, prompt: np.ndarray,
               output: np.ndarray) -> None:
        end = self.size + arrival_s.shape[0]
        if end > self.arrival_s.shape[0]:
            self._grow(int(end * 1.25))
        rows = slice(self.size, end)
        self.arrival_s[rows], self.model_idx[rows] = arrival_s, model_idx
        self.prompt_tokens[rows], self.output_tokens[rows] = prompt, output
        self.size = end

    def _grow(self, capacity: int) -> None:
        for name in ("arrival_s", "model_idx", "prompt_tokens", "output_tokens"):
            old = getattr(self, name)
            new = np.empty(capacity, old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def table(self, model_names: tuple[str, ...], slo_class: str) -> RequestTable:
        n = self.size
        # Built directly rather than through from_columns: chunks are disjoint in time and each is sorted, so the
        # columns are sorted, and skipping the check saves a pass (and a temporary) over up to 10⁸ rows.
        return RequestTable(
            arrival_s=self.arrival_s[:n], model_idx=self.model_idx[:n], slo_idx=np.zeros(n, np.int16),
            prompt_tokens=self.prompt_tokens[:n], output_tokens=self.output_tokens[:n], model_names=model_names,
            slo_names=(slo_class,), request_id=np.arange(n, dtype=np.int64),
        )
