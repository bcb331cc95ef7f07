"""Trace summaries: top models plus an "others" row, percentiles, and the rate series."""

from __future__ import annotations

import numpy as np
import pytest

from core.requests import RequestTable
from tests.factories import make_table
from workloads.availability import AvailabilityTrace
from workloads.summary import nice_bin_s, rate_over_time, summarize, summarize_availability


def _long_tail() -> RequestTable:
    rng = np.random.default_rng(0)
    n = 10_000
    names = [f"m{i}" for i in range(30)]
    p = 1 / np.arange(1, 31)
    return RequestTable.from_columns(
        arrival_s=np.sort(rng.uniform(0, 1000, n)), model_idx=rng.choice(30, n, p=p / p.sum()),
        slo_idx=np.zeros(n), prompt_tokens=rng.integers(1, 1001, n), output_tokens=np.full(n, 7),
        model_names=names, slo_names=["default"],
    )


def test_summary_top_models_and_others() -> None:
    table = _long_tail()
    s = summarize(table, top=5)
    assert s.requests == len(table) and s.num_models == 30 and len(s.models) == 6
    assert [r.model for r in s.models[:5]] == ["m0", "m1", "m2", "m3", "m4"]
    others = s.models[-1]
    assert others.model == "others" and others.num_models == 25
    assert sum(r.requests for r in s.models) == len(table)
    assert s.rate_per_s == pytest.approx(len(table) / table.duration_s)
    assert s.all_models.output_tokens_pct == (7.0, 7.0, 7.0)
    assert s.all_models.prompt_tokens_pct[0] == pytest.approx(500, abs=25)


def test_rate_over_time_integrates_to_the_request_count() -> None:
    table = make_table(5000, models=("a", "b", "c"), rate_per_s=5.0)
    starts, series = rate_over_time(table, top=2)
    width = np.diff(starts)[0]
    assert set(series) == {"all", *[table.model_names[i] for i in np.argsort(-np.bincount(table.model_idx))[:2]]}
    covered = np.minimum(starts + width, table.start_s + table.duration_s) - starts
    assert (series["all"] * np.maximum(covered, 1.0)).sum() == pytest.approx(len(table), rel=1e-6)
    single = rate_over_time(make_table(100))[1]
    assert list(single) == ["all"]


def test_nice_bins() -> None:
    assert [nice_bin_s(x) for x in (0.2, 3, 45, 3000, 90_000)] == [1, 5, 60, 3600, 172_800]


def test_availability_summary_weights_counts_by_how_long_they_held() -> None:
    # 4 instances for 1 h, 1 for 2 h (3 removed at once), 3 for 1 h: 4 hours observed.
    trace = AvailabilityTrace("pool", np.array([0.0, 3600.0, 3600.0, 10800.0]), np.array([4, -2, -1, 2]), 14400.0)
    s = summarize_availability(trace)
    assert (s.min_count, s.max_count, s.count_pct) == (1, 4, (1, 1, 4))
    assert s.mean_count == pytest.approx((4 + 2 + 3) / 4)
    assert (s.removals, s.additions, s.largest_removal) == (3, 6, 3)
    assert s.removals_per_hour == pytest.approx(0.75)
    assert s.hazard_per_node_hour == pytest.approx(3 / 9)  # 9 instance-hours up
