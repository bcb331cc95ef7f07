"""What a trace looks like: totals, per-model rates and length percentiles, and the arrival rate over time; for a
rate profile, the spread of its rates; for an availability trace, how many instances were up and how often they
were taken away.

Long-tail traces (hundreds of models) are summarised as the busiest `top` models plus one "others" row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.requests import RequestTable
from workloads.availability import AvailabilityTrace
from workloads.rates import RateProfile
from workloads.servegen import ServeGenSet

PERCENTILES = (50, 90, 99)
OTHERS = "others"


@dataclass(frozen=True)
class ModelStats:
    """One row of the per-model table (or the "others" row, with `num_models` > 1)."""

    model: str
    requests: int
    rate_per_s: float  # requests / trace duration
    prompt_tokens_pct: tuple[float, ...]  # at PERCENTILES
    output_tokens_pct: tuple[float, ...]  # at PERCENTILES
    num_models: int = 1


@dataclass(frozen=True)
class TraceSummary:
    requests: int
    duration_s: float
    num_models: int
    rate_per_s: float
    models: tuple[ModelStats, ...]  # busiest first; the last row may be "others"
    slo_requests: dict[str, int]
    all_models: ModelStats  # the whole trace as one row


def summarize(table: RequestTable, *, top: int = 15) -> TraceSummary:
    """Totals and the busiest `top` models (plus an "others" row for the rest)."""
    duration = table.duration_s
    counts = np.bincount(table.model_idx, minlength=len(table.model_names))
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    rows = [_stats(table, [i], table.model_names[i], duration) for i in order[:top]]
    if len(order) > top:
        rows.append(_stats(table, order[top:], OTHERS, duration))
    slo_counts = np.bincount(table.slo_idx, minlength=len(table.slo_names))
    return TraceSummary(
        requests=len(table), duration_s=duration, num_models=len(order), rate_per_s=_rate(len(table), duration),
        models=tuple(rows), slo_requests={n: int(c) for n, c in zip(table.slo_names, slo_counts, strict=True)},
        all_models=_stats(table, order, "all", duration),
    )


def _stats(table: RequestTable, model_ids: list[int], name: str, duration_s: float) -> ModelStats:
    rows = np.isin(table.model_idx, model_ids) if len(model_ids) < len(table.model_names) else slice(None)
    prompt, output = table.prompt_tokens[rows], table.output_tokens[rows]
    pct = lambda x: tuple(float(v) for v in np.percentile(x, PERCENTILES)) if x.shape[0] else (0.0,) * 3
    return ModelStats(name, int(prompt.shape[0]), _rate(prompt.shape[0], duration_s), pct(prompt), pct(output),
                      num_models=len(model_ids))


def _rate(count: int, duration_s: float) -> float:
    return count / duration_s if duration_s > 0 else float(count)


def rate_over_time(table: RequestTable, *, top: int = 5, num_bins: int = 200) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(bin starts in seconds, {"all": rate, model: rate for the `top` busiest when there are several}), in
    requests/s per time bin; the last bin's rate is over the part of it the trace covers."""
    width = nice_bin_s(table.duration_s / num_bins)
    edges = table.start_s + np.arange(0, table.duration_s + width, width)
    edges = np.append(edges, edges[-1] + width) if edges.shape[0] < 2 else edges
    covered = np.maximum(np.minimum(edges[1:], table.start_s + table.duration_s) - edges[:-1], min(width, 1.0))
    series = {"all": np.histogram(table.arrival_s, edges)[0] / covered}
    counts = np.bincount(table.model_idx, minlength=len(table.model_names))
    if np.count_nonzero(counts) > 1:
        for i in np.argsort(-counts, kind="stable")[:top]:
            if counts[i]:
                series[table.model_names[i]] = np.histogram(table.arrival_s[table.model_idx == i], edges)[0] / covered
    return edges[:-1], series


def nice_bin_s(raw_s: float) -> float:
    """The smallest of 1, 2, 5, 10, 30 s, 1, 2, 5, 10, 30 min, 1 h, … that is ≥ raw_s (at least 1 s)."""
    for step in (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400):
        if step >= raw_s:
            return float(step)
    return float(86400 * np.ceil(raw_s / 86400))


@dataclass(frozen=True)
class ClientStats:
    client: int
    expected_requests: float  # Σ rate × window length
    mean_rate_per_s: float
    peak_rate_per_s: float
    active_windows: int  # windows with traffic
    mean_cv: float  # over active windows, weighted by requests


def summarize_servegen(sg: ServeGenSet, *, top: int = 15) -> tuple[list[ClientStats], ClientStats | None]:
    """Per-client statistics of a ServeGen rate series: the busiest `top`, and the rest as one row (client -1)."""
    counts = sg.rate_per_s.sum(axis=1) * sg.window_s
    order = np.argsort(-counts, kind="stable")
    rows = [_client_stats(sg, [int(i)], int(sg.clients[i])) for i in order[:top]]
    rest = _client_stats(sg, [int(i) for i in order[top:]], -1) if order.shape[0] > top else None
    return rows, rest


def _client_stats(sg: ServeGenSet, rows: list[int], client: int) -> ClientStats:
    rate = sg.rate_per_s[rows].sum(axis=0)
    weights = sg.rate_per_s[rows]
    mean_cv = float((sg.cv[rows] * weights).sum() / weights.sum()) if weights.sum() > 0 else 0.0
    return ClientStats(client, float(rate.sum() * sg.window_s), float(rate.mean()), float(rate.max()),
                       int(np.count_nonzero(rate > 0)), mean_cv)


@dataclass(frozen=True)
class AvailabilitySummary:
    """One spot pool's trace: the instances up over time (time-weighted) and its removals."""

    name: str
    duration_s: float
    events: int
    max_count: int
    min_count: int  # over the observation window, after the first event
    mean_count: float  # time-weighted
    count_pct: tuple[int, ...]  # time-weighted p10 / p50 / p90 of the count
    removals: int  # instances taken away
    additions: int  # instances joining
    largest_removal: int  # most instances taken away at one time
    removals_per_hour: float
    hazard_per_node_hour: float  # removals per instance-hour up


COUNT_PERCENTILES = (10, 50, 90)


def summarize_availability(trace: AvailabilityTrace) -> AvailabilitySummary:
    """Counts weighted by how long each held, from the first event to the end of the observation window."""
    start = float(trace.time_s[0]) if trace.num_events else 0.0
    cuts = np.unique(np.concatenate([[start, trace.duration_s], trace.time_s]))
    cuts = cuts[(cuts >= start) & (cuts <= trace.duration_s)]
    levels, spans = trace.count_at(cuts[:-1]), np.diff(cuts)
    pct = tuple(int(v) for v in np.quantile(levels, np.asarray(COUNT_PERCENTILES) / 100, weights=spans,
                                            method="inverted_cdf")) if spans.sum() > 0 else (0,) * len(COUNT_PERCENTILES)
    removed = -trace.delta[trace.delta < 0]
    at_once = _removed_at_once(trace)
    span_s = max(trace.duration_s - start, 1e-12)
    exposure_h = trace.node_seconds(start) / 3600
    return AvailabilitySummary(
        name=trace.name, duration_s=trace.duration_s, events=trace.num_events, max_count=trace.max_count,
        min_count=int(levels.min()) if len(levels) else 0,
        mean_count=float(np.sum(levels * spans) / span_s) if len(levels) else 0.0, count_pct=pct,
        removals=int(removed.sum()), additions=int(trace.delta[trace.delta > 0].sum()), largest_removal=at_once,
        removals_per_hour=float(removed.sum() / span_s * 3600),
        hazard_per_node_hour=float(removed.sum() / exposure_h) if exposure_h > 0 else 0.0,
    )


def _removed_at_once(trace: AvailabilityTrace) -> int:
    """Most instances removed by the events of one time (events at the same time apply together)."""
    gone = trace.delta < 0
    if not gone.any():
        return 0
    times, index = np.unique(trace.time_s[gone], return_inverse=True)
    return int(np.bincount(index, weights=-trace.delta[gone], minlength=len(times)).max())


RATE_PERCENTILES = (10, 50, 90)


@dataclass(frozen=True)
class RateSummary:
    """A rate profile at a glance: how much traffic, and how unevenly it comes."""

    name: str
    intervals: int
    interval_s: float
    duration_s: float
    expected_requests: float
    mean_rate_per_s: float
    rate_pct: tuple[float, ...]  # at RATE_PERCENTILES, over intervals
    peak_rate_per_s: float
    peak_to_mean: float  # what a fleet sized for the mean rate would miss at the peak
    idle_intervals: int  # intervals at rate 0
    largest_step: float  # largest change from one interval to the next, as a share of the mean rate


def summarize_rates(profile: RateProfile) -> RateSummary:
    r = profile.rates_per_s
    mean = float(r.mean())
    step = float(np.abs(np.diff(r)).max() / mean) if len(r) > 1 and mean > 0 else 0.0
    return RateSummary(
        name=profile.name, intervals=len(r), interval_s=profile.interval_s, duration_s=profile.duration_s,
        expected_requests=profile.expected_requests, mean_rate_per_s=mean,
        rate_pct=tuple(float(v) for v in np.percentile(r, RATE_PERCENTILES)), peak_rate_per_s=float(r.max()),
        peak_to_mean=float(r.max() / mean) if mean > 0 else 0.0, idle_intervals=int((r == 0).sum()),
        largest_step=step,
    )
