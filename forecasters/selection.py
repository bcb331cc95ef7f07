"""Choosing a forecasting method per series by a rolling-origin backtest on WAPE.

`select(y, interval_s=..., config=...)` splits the history: candidates are fitted on the older part and forecast
from every origin of the newer part (fixed parameters, one vectorised pass per candidate, see
`forecasters.methods`); the candidate with the least WAPE averaged over leads 1…`max_lead`, weighted 1/h
(`backtest.lead_weights`: receding-horizon plans act on their first intervals), on intermittent series of the
demand accumulated over the leads (see `backtest`), wins — provided it beats persistence by more than chance
(a one-sided Diebold–Mariano test; otherwise persistence stays). The winner is then refitted on the whole history
and its validation residuals
become the conformal calibration of its quantiles.

Which candidates are tried depends on the series: seasonal methods only at periods the series shows (the daily
period and the strongest autocorrelation peak), Croston/TSB only on intermittent series, the costlier statistical
models only where they can be estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from core.forecast import BacktestScore
from forecasters.backtest import (
    Calibration,
    calibrate,
    improvement_tstat,
    lead_weights,
    origins_for,
    rolling_scores,
    scale_floor,
    wape,
)
from forecasters.methods import (
    EWMA,
    TSB,
    Croston,
    Fitted,
    Method,
    MethodFailed,
    Persistence,
    SeasonalNaive,
    single_threaded_blas,
)
from forecasters.series import with_gaps
from forecasters.statmethods import ARDiff, HoltWinters, Sarimax

ALL_METHODS = ("persistence", "seasonal_naive", "ewma", "holt", "holt_winters", "ar_diff", "sarimax", "croston", "tsb")
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class LoadConfig:
    """How load forecasters select and calibrate. Frozen: build a new one to change it."""

    max_lead: int = 12  # leads backtested and calibrated (forecasts may go further, see Calibration)
    validation_share: float = 1 / 3  # share of the history whose origins form the selection backtest
    max_validation: int = 576  # most origins in the selection backtest (4 days of 10-minute intervals)
    calibration_window: int = 288  # most recent residuals per lead that set the quantiles
    methods: tuple[str, ...] = ALL_METHODS  # names from ALL_METHODS
    intermittent_zero_share: float = 0.3  # share of zero intervals from which Croston/TSB are tried
    min_seasonal_acf: float = 0.2  # autocorrelation a period needs before seasonal methods are tried at it
    max_holt_winters_period: int = 168  # Holt-Winters keeps one state per season slot; longer seasons cost too much
    ar_lags: int = 12
    min_backtest: int = 16  # shorter histories get the `recent_mean` fallback
    significance_z: float = 1.645  # one-sided 5 %: how clearly a method must beat persistence to replace it


DEFAULT_CONFIG = LoadConfig()


@dataclass(frozen=True, eq=False)
class Candidate:
    """One method's backtest on one series."""

    method: Method
    fitted: Fitted  # fitted on the older part of the history
    paths: np.ndarray  # (n, max_lead) forecasts from every origin, clipped at zero
    score: BacktestScore  # WAPE per lead (what is reported)
    selection_score: float  # what selection minimises: WAPE over leads weighted 1/h (cumulative if intermittent)
    cumulative: bool = False


@dataclass(frozen=True, eq=False)
class Selection:
    """The outcome of `select`: the chosen method refitted on all history, and the evidence for it."""

    method: Method
    fitted: Fitted  # fitted on the whole history
    chosen: Candidate  # its backtest (fitted on the older part)
    scores: tuple[BacktestScore, ...]  # every method that could be fitted, in trial order
    calibration: Calibration
    first_origin: int  # first validation origin
    skipped: dict[str, str] = field(default_factory=dict)  # method → why it was not tried

    @property
    def name(self) -> str:
        return self.method.name


def seasonal_periods(y: np.ndarray, interval_s: float, config: LoadConfig) -> list[int]:
    """Periods worth trying: the daily period and the strongest autocorrelation peak (of the differenced series),
    each only if that autocorrelation reaches `config.min_seasonal_acf` and the history holds two full seasons."""
    from statsmodels.tsa.stattools import acf

    n = len(y)
    if n < 8 or np.ptp(y) == 0 or np.ptp(np.diff(y)) == 0:
        return []
    max_lag = min(n // 2, round(1.2 * SECONDS_PER_DAY / interval_s))
    if max_lag < 2:
        return []
    # On first differences: the level of a bursty series is autocorrelated at every lag, which would make
    # noise look like seasons; a true season survives differencing.
    corr = acf(np.diff(y), nlags=max_lag, fft=True)
    periods = []
    daily = round(SECONDS_PER_DAY / interval_s)
    if 2 <= daily <= max_lag and corr[daily] >= config.min_seasonal_acf:
        periods.append(daily)
    peaks = [k for k in range(2, max_lag) if corr[k] >= corr[k - 1] and corr[k] >= corr[k + 1]]
    if peaks:
        best = max(peaks, key=lambda k: corr[k])
        if corr[best] >= config.min_seasonal_acf and best not in periods:
            periods.append(best)
    return [p for p in periods if n >= 2 * p]


def is_intermittent(y: np.ndarray, config: LoadConfig) -> bool:
    """At least `intermittent_zero_share` of the intervals are zero."""
    return (float(np.mean(y == 0)) if len(y) else 1.0) >= config.intermittent_zero_share


def candidate_methods(y: np.ndarray, interval_s: float, config: LoadConfig) -> list[Method]:
    """Methods to try on a fit history `y`, simplest first."""
    wanted = set(config.methods)
    intermittent = is_intermittent(y, config)
    periods = seasonal_periods(y, interval_s, config) if wanted & {"seasonal_naive", "holt_winters"} else []
    out: list[Method] = []
    if "persistence" in wanted:
        out.append(Persistence())
    out += [SeasonalNaive(p) for p in periods if "seasonal_naive" in wanted]
    if "ewma" in wanted:
        out.append(EWMA())
    if intermittent:
        out += [m for m in (Croston(), TSB()) if m.name in wanted]
    if "holt" in wanted and not intermittent:
        out.append(HoltWinters())
    out += [HoltWinters(p) for p in periods if "holt_winters" in wanted and p <= config.max_holt_winters_period]
    if "ar_diff" in wanted:
        out.append(ARDiff(lags=config.ar_lags))
    if "sarimax" in wanted and not intermittent:
        out.append(Sarimax())
    return out


def backtest(method: Method, y: np.ndarray, split: int, max_lead: int, *, cumulative: bool = False,
             target: np.ndarray | None = None) -> Candidate:
    """Fit `method` on `y[:split]`, forecast from every origin, score WAPE per lead on origins `≥ split-1`.

    `target` is what the forecasts are scored against (default `y`): `y` with NaN where an interval had no data
    and `y` holds a carried-forward value (`forecasters.series.clean_history`).

    With `cumulative`, selection scores the demand summed over leads 1…h instead of each lead alone: on an
    intermittent series *when* a demand lands is noise no method predicts, and per-interval absolute errors are
    then minimised by forecasting zero; the cumulative error rewards getting the rate right (Kourentzes,
    "On intermittent demand model optimisation and selection", Int. J. Production Economics 156, 2014).
    """
    target = y if target is None else target
    fitted = method.fit(y[:split])
    paths = np.maximum(np.nan_to_num(fitted.paths(y, max_lead), nan=0.0, posinf=0.0), 0.0)
    wapes, cumulative_wapes = {}, []
    for h in range(1, max_lead + 1):
        origins = origins_for(len(y), split - 1, h)
        wapes[h] = wape(paths[origins, h - 1], target[origins + h])
        if cumulative:
            actual = sum(target[origins + k] for k in range(1, h + 1))
            cumulative_wapes.append(wape(paths[origins, :h].sum(axis=1), actual))
    score = BacktestScore(method=method.name, wape_by_lead=wapes, num_origins=len(origins_for(len(y), split - 1, 1)))
    selection_score = float(np.average(cumulative_wapes if cumulative else list(wapes.values()),
                                       weights=lead_weights(max_lead)))
    return Candidate(method, fitted, paths, score, selection_score, cumulative)


def validation_split(n: int, config: LoadConfig) -> int:
    """Index where validation starts: `validation_share` of the history, at least `max_lead + 4` origins, at most
    `max_validation`."""
    num_val = min(config.max_validation, max(int(n * config.validation_share), config.max_lead + 4))
    return max(n - num_val, 1)


def select(y: np.ndarray, *, interval_s: float, config: LoadConfig = DEFAULT_CONFIG,
           score_coverage: bool = False, missing: np.ndarray | None = None) -> Selection:
    """Choose, refit and calibrate a method for the clean history `y` (at least `config.min_backtest` long).

    With `score_coverage`, every candidate's backtest also reports the coverage of its conformal bands over the
    second half of the validation origins (calibrated on residuals known at each origin). `missing` marks the
    intervals that had no data (their value in `y` was carried forward): they are fitted through but never scored.
    """
    target = with_gaps(y, missing)
    with single_threaded_blas():
        return _select(y, target, interval_s, config, score_coverage)


def _select(y: np.ndarray, target: np.ndarray, interval_s: float, config: LoadConfig,
            score_coverage: bool) -> Selection:
    split = validation_split(len(y), config)
    tried, skipped = [], {}
    cumulative = is_intermittent(y[:split], config)
    for method in candidate_methods(y[:split], interval_s, config):
        if split < method.min_history:
            skipped[method.name] = f"needs {method.min_history} intervals to fit, validation leaves {split}"
            continue
        try:
            tried.append(backtest(method, y, split, config.max_lead, cumulative=cumulative, target=target))
        except MethodFailed as exc:
            skipped[method.name] = str(exc)
    if not tried:  # every configured method failed: persistence needs nothing, so it always stands in
        tried.append(backtest(Persistence(), y, split, config.max_lead, cumulative=cumulative, target=target))
    best = choose(tried, target, split - 1, config.significance_z)
    floor = scale_floor(target[:split])
    if score_coverage:
        tried = [_with_coverage(c, target, split, floor, config) for c in tried]
        best = next(c for c in tried if c.method is best.method)
    try:
        final = best.method.fit(y)
    except MethodFailed:
        final = best.fitted  # the whole history broke what its older part supported: keep the older fit
    calibration = calibrate(best.paths, target, split - 1, window=config.calibration_window, floor=floor)
    scores = tuple(c.score for c in tried)
    return Selection(best.method, final, best, scores, calibration, split - 1, skipped)


def choose(tried: list[Candidate], y: np.ndarray, first_origin: int, z: float) -> Candidate:
    """The least mean WAPE among persistence and the candidates that beat persistence significantly.

    On short, non-stationary validation windows the raw minimum often belongs to a method that was lucky there
    and loses afterwards; requiring a one-sided Diebold–Mariano statistic above `z` against persistence keeps
    the baseline unless the evidence is clear. Without persistence among the candidates, the raw minimum wins.
    """
    base = next((c for c in tried if isinstance(c.method, Persistence)), None)
    if base is None:
        return min(tried, key=lambda c: c.selection_score)
    better = [c for c in tried if c is not base and c.selection_score < base.selection_score
              and improvement_tstat(base.paths, c.paths, y, first_origin, cumulative=c.cumulative) > z]
    return min([base, *better], key=lambda c: c.selection_score)


def band_coverage(paths: np.ndarray, y: np.ndarray, split: int, floor: float, config: LoadConfig) -> dict[str, float]:
    """Coverage of rolling conformal bands over the second half of the validation origins (calibrated from the
    validation start on, with residuals known at each origin), averaged over leads."""
    half = split - 1 + (len(y) - split) // 2
    scores = rolling_scores(paths, y, half, range(1, config.max_lead + 1), floor=floor,
                            window=config.calibration_window, calib_start=split - 1)
    return {name: float(np.mean([s.coverage[name] for s in scores])) for name in scores[0].coverage}


def _with_coverage(c: Candidate, y: np.ndarray, split: int, floor: float, config: LoadConfig) -> Candidate:
    score = c.score.model_copy(update={"coverage": band_coverage(c.paths, y, split, floor, config)})
    return replace(c, score=score)
