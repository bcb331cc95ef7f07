import numpy as np
import pytest

from core.requests import RequestTable
from tests.factories import make_table


def test_from_columns_sorts_by_arrival_and_keeps_rows_together() -> None:
    t = RequestTable.from_columns(
        arrival_s=[3.0, 1.0, 2.0], model_idx=[0, 1, 0], slo_idx=[0, 0, 0], prompt_tokens=[30, 10, 20],
        output_tokens=[3, 1, 2], model_names=["a", "b"], slo_names=["x"],
    )
    assert t.arrival_s.tolist() == [1.0, 2.0, 3.0]
    assert t.prompt_tokens.tolist() == [10, 20, 30]
    assert [r.model for r in t] == ["b", "a", "a"]
    assert t.request_id.tolist() == [1, 2, 0]


def test_unsorted_input_with_sort_false_is_an_error() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        RequestTable.from_columns(arrival_s=[2.0, 1.0], model_idx=[0, 0], slo_idx=[0, 0], prompt_tokens=[1, 1],
                                  output_tokens=[1, 1], model_names=["a"], slo_names=["x"], sort=False)


def test_between_and_for_model_select_rows() -> None:
    t = make_table(1000, models=("a", "b"), rate_per_s=100.0)
    part = t.between(2.0, 5.0)
    assert np.all((part.arrival_s >= 2.0) & (part.arrival_s < 5.0))
    assert len(part) == int(np.sum((t.arrival_s >= 2.0) & (t.arrival_s < 5.0)))
    assert set(t.for_model("b").model_idx.tolist()) == {1}


def test_concat_unions_dictionaries() -> None:
    a = make_table(10, models=("x",))
    b = make_table(10, models=("y", "x"), seed=1)
    both = RequestTable.concat([a, b])
    assert both.model_names == ("x", "y")
    assert len(both) == 20
    assert sorted(both.model_of(i) for i in range(20)).count("x") == 10 + int(np.sum(b.model_idx == 1))
    assert len(np.unique(both.request_id)) == 20


def test_a_million_rows_are_cheap() -> None:
    t = make_table(1_000_000, models=tuple(f"m{i}" for i in range(100)), rate_per_s=1000.0)
    assert t.arrival_s.nbytes + t.prompt_tokens.nbytes < 16 * 1024 * 1024
    assert len(t.between(10.0, 20.0)) > 0
