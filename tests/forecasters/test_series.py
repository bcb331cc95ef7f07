"""Binning request logs into count series; cleaning histories."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.requests import RequestTable
from forecasters.series import carry_forward, clean_history, count_series


def table() -> RequestTable:
    return RequestTable.from_columns(
        arrival_s=[0.5, 1.0, 9.9, 10.0, 25.0, 31.0], model_idx=[0, 1, 0, 0, 1, 0], slo_idx=[0, 0, 1, 0, 0, 1],
        prompt_tokens=[10, 20, 30, 40, 50, 60], output_tokens=[1, 2, 3, 4, 5, 6], model_names=("a", "b", "idle"),
        slo_names=("chat", "batch"),
    )


def test_counts_per_model_per_interval() -> None:
    s = count_series(table(), 10.0, start_s=0.0, end_s=30.0)
    assert s.names == ("a", "b", "idle")
    assert np.array_equal(s.counts, [[2, 1, 0], [1, 0, 1], [0, 0, 0]])  # 31.0 lies past the end
    assert s.end_s == 30.0 and np.array_equal(s.total(), [3, 1, 1])


def test_default_window_holds_the_last_arrival_and_tokens_can_be_summed() -> None:
    s = count_series(table(), 10.0, by="total", weight="prompt_tokens")
    assert s.start_s == 0.5 and s.num_intervals == 4
    assert s.counts.sum() == 210
    by_class = count_series(table(), 10.0, by="slo_class", start_s=0.0, end_s=40.0)
    assert np.array_equal(by_class.counts.sum(axis=1), [4, 2])


def test_bad_interval_is_refused() -> None:
    with pytest.raises(InputError):
        count_series(table(), 0.0)


def test_clean_history_carries_gaps_forward_and_refuses_negatives() -> None:
    clean = clean_history([1.0, np.nan, 3.0, np.nan], series="m")
    assert np.array_equal(clean.values, [1.0, 1.0, 3.0, 3.0]) and clean.num_filled == 2
    assert clean.missing.tolist() == [False, True, False, True] and "2 intervals without data" in clean.note
    with pytest.raises(InputError) as exc:
        clean_history([1.0, -1.0, -2.0], series="m")
    assert exc.value.where == "m[1]" and "2 negative" in str(exc.value)
    with pytest.raises(InputError, match="every interval is missing"):
        clean_history([np.nan, np.nan], series="m")


def test_carry_forward_is_causal_row_by_row() -> None:
    y = np.array([[np.nan, 2.0, np.nan, np.nan, 5.0], [1.0, np.nan, 3.0, 4.0, np.nan]])
    filled = carry_forward(y)
    assert filled.tolist() == [[2.0, 2.0, 2.0, 2.0, 5.0], [1.0, 1.0, 3.0, 4.0, 4.0]]  # a leading gap takes the first
    assert np.isnan(y).sum() == 5  # the input is left alone
    clean = np.arange(4.0)
    assert carry_forward(clean) is clean
