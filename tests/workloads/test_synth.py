"""Model splits, fleet shares, SLO assignment, rate scaling and slicing."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from tests.factories import make_fleet, make_table
from workloads.synth import (
    assign_slo_classes,
    assign_slo_mix,
    fleet_model_shares,
    map_by_rank,
    rename_models,
    scale_rate,
    split_models,
    time_slice,
    zipf_shares,
)


def _within(observed: np.ndarray, p: np.ndarray, n: int, sigmas: float = 5.0) -> bool:
    """Multinomial counts within `sigmas` standard deviations of n·p in every cell."""
    return bool(np.all(np.abs(observed - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1))


def test_zipf_shares() -> None:
    np.testing.assert_allclose(zipf_shares(3, 1.0), np.array([1, 1 / 2, 1 / 3]) / (11 / 6))
    np.testing.assert_allclose(zipf_shares(4, 0.0), 0.25)


def test_split_models_follows_zipf_and_is_seeded() -> None:
    table = make_table(20_000)
    split = split_models(table, 5, zipf_exponent=1.2, seed=3)
    assert split.model_names == tuple(f"model-{i}" for i in range(5))
    counts = np.bincount(split.model_idx, minlength=5)
    assert _within(counts, zipf_shares(5, 1.2), len(table))
    assert np.array_equal(split.arrival_s, table.arrival_s)
    assert np.array_equal(split_models(table, 5, zipf_exponent=1.2, seed=3).model_idx, split.model_idx)
    named = split_models(table, ["x", "y"], zipf_exponent=0.0, seed=3)
    assert named.model_names == ("x", "y") and _within(np.bincount(named.model_idx), np.array([0.5, 0.5]), 20_000)


def test_fleet_shares_mix_plus_zipf_remainder() -> None:
    models = [{"name": "m{i}", "arch": "Llama-3.2-1B", "copies": 4}]
    zipf_only = fleet_model_shares(make_fleet(models=models, workload={"zipf_exponent": 1.0}))
    np.testing.assert_allclose(list(zipf_only.values()), zipf_shares(4, 1.0))
    mixed = fleet_model_shares(make_fleet(models=models, workload={"mix": [{"model": "m2", "share": 0.5}]}))
    assert mixed["m2"] == 0.5 and sum(mixed.values()) == pytest.approx(1.0)
    np.testing.assert_allclose([mixed["m0"], mixed["m1"], mixed["m3"]], 0.5 * zipf_shares(3, 1.0))
    over = fleet_model_shares(make_fleet(models=models, workload={"mix": [{"model": "m0", "share": 3},
                                                                        {"model": "m1", "share": 1}]}))
    assert over == {"m0": 0.75, "m1": 0.25, "m2": 0.0, "m3": 0.0}


def test_assign_slo_classes_uses_per_model_mix_then_default() -> None:
    fleet = make_fleet(
        models=[{"name": "a", "arch": "Llama-3.2-1B"}, {"name": "b", "arch": "Llama-3.2-1B"}],
        workload={"default_slo_mix": {"interactive": 0.7, "batch": 0.3},
                  "mix": [{"model": "b", "share": 0.5, "slo_classes": {"batch": 1.0}}]},
    )
    table = assign_slo_classes(make_table(10_000, models=("a", "b")), fleet, seed=1)
    assert table.slo_names == ("interactive", "batch")
    is_a = table.model_idx == 0
    assert np.all(table.slo_idx[~is_a] == 1)
    assert _within(np.bincount(table.slo_idx[is_a], minlength=2), np.array([0.7, 0.3]), int(is_a.sum()))
    first_only = assign_slo_classes(make_table(100), make_fleet(), seed=1)
    assert set(first_only.slo_idx) == {0} and first_only.slo_names[0] == "interactive"


def test_assign_slo_mix_and_bad_mixes() -> None:
    table = assign_slo_mix(make_table(5000), {"gold": 1, "bronze": 3}, seed=2)
    assert table.slo_names == ("gold", "bronze")
    assert _within(np.bincount(table.slo_idx), np.array([0.25, 0.75]), 5000)
    with pytest.raises(InputError, match="positive sum"):
        assign_slo_mix(make_table(10), {"gold": 0.0}, seed=2)


def test_map_by_rank_keeps_streams_whole_and_wraps() -> None:
    table = make_table(3000, models=("a", "b", "c"), seed=5)
    counts = np.bincount(table.model_idx)
    busiest = np.argsort(-counts)
    mapped = map_by_rank(table, ["x", "y"])
    assert mapped.model_names == ("x", "y")
    # rank 0 → x, rank 1 → y, rank 2 wraps to x
    assert np.bincount(mapped.model_idx).tolist() == [counts[busiest[0]] + counts[busiest[2]], counts[busiest[1]]]


def test_rename_merges_streams() -> None:
    table = make_table(100, models=("a", "b", "c"))
    renamed = rename_models(table, {"a": "z", "c": "z"})
    assert renamed.model_names == ("z", "b")
    assert (np.asarray(renamed.model_names)[renamed.model_idx] == np.where(table.model_idx == 1, "b", "z")).all()
    with pytest.raises(InputError, match="nope"):
        rename_models(table, {"nope": "z"})


def test_time_slice_rebases() -> None:
    table = make_table(1000, rate_per_s=10.0)
    part = time_slice(table, 20.0, 50.0)
    assert part.arrival_s.min() >= 0 and part.arrival_s.max() < 30
    assert len(part) == np.count_nonzero((table.arrival_s >= 20) & (table.arrival_s < 50))
    assert time_slice(table, 20.0, 50.0, rebase=False).arrival_s.min() >= 20
    with pytest.raises(InputError, match="end_s"):
        time_slice(table, 5, 5)


@pytest.mark.parametrize("factor", [0.3, 1.0, 2.0, 3.6])
def test_scale_rate_keeps_span_profile_and_lengths(factor: float) -> None:
    # A rate that steps from 5/s to 20/s halfway: the profile must survive scaling at the scale of minutes.
    low, high = make_table(3000, rate_per_s=5.0, seed=1), make_table(12000, rate_per_s=20.0, seed=2)
    table = type(low).concat([low, high.with_arrivals(high.arrival_s + low.arrival_s[-1])])
    scaled = scale_rate(table, factor, seed=7, max_shift_s=30.0)
    assert len(scaled) == pytest.approx(factor * len(table), rel=0.03)
    assert scaled.arrival_s.min() >= table.arrival_s[0] and scaled.arrival_s.max() <= table.arrival_s[-1]
    assert np.all(np.diff(scaled.arrival_s) >= 0) and len(np.unique(scaled.request_id)) == len(scaled)
    half = table.arrival_s[0] + table.duration_s / 2
    share_late = np.mean(scaled.arrival_s > half + 60)
    assert share_late == pytest.approx(np.mean(table.arrival_s > half + 60), abs=0.03)
    assert set(scaled.prompt_tokens) == set(table.prompt_tokens)


def test_scale_rate_rejects_non_positive_factors() -> None:
    with pytest.raises(InputError, match="factor"):
        scale_rate(make_table(10), 0.0, seed=1)


@pytest.mark.parametrize(("factor", "text"), [(float("inf"), "finite"), (float("nan"), "finite"),
                                              (1e9, "requests on this machine")])
def test_scale_rate_rejects_factors_that_cannot_be_materialised(factor: float, text: str) -> None:
    with pytest.raises(InputError, match=text):
        scale_rate(make_table(10), factor, seed=1)
