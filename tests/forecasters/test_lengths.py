"""Per-request length distributions, remaining work, and sums of a group's remaining output tokens."""

from __future__ import annotations

import numpy as np
import pytest

from forecasters.lengths import (
    ANY,
    EmpiricalLengths,
    GridSum,
    GroupLengths,
    LengthBatch,
    NormalSum,
    group_remaining_output,
    group_sum,
)
from tests.factories import make_table


def samples(n: int = 4000, seed: int = 0) -> np.ndarray:
    return np.ceil(np.random.default_rng(seed).lognormal(4.0, 0.8, n))


def test_batch_moments_quantiles_and_cdf_match_the_sample() -> None:
    x = samples()
    b = LengthBatch.empirical(x, 2)
    assert np.allclose(b.mean(), x.mean()) and np.allclose(b.var(), x.var())
    assert np.allclose(b.quantile(0.9), np.quantile(x, 0.9, method="inverted_cdf"))
    assert np.allclose(b.cdf(100.0), np.mean(x <= 100))


def test_remaining_moments_condition_on_what_was_generated() -> None:
    x = samples()
    b = LengthBatch.empirical(x, 3)
    mean, var = b.remaining_moments(np.array([0.0, 50.0, 1e9]))
    left = x[x > 50] - 50
    assert mean[0] == pytest.approx(x.mean())
    assert mean[1] == pytest.approx(left.mean()) and var[1] == pytest.approx(left.var())
    assert mean[2] == 1.0 and var[2] == 0.0  # outlived every length seen: one more token


def test_exact_sum_of_a_small_group_agrees_with_monte_carlo() -> None:
    x = samples()
    generated = np.array([0.0, 10.0, 40.0, 0.0, 80.0])
    dist = group_sum(LengthBatch.empirical(x, 5), generated)
    assert isinstance(dist, GridSum)
    rng = np.random.default_rng(1)
    draws = np.zeros(20000)
    for g in generated:
        pool = x[x > g] - g
        draws += rng.choice(pool, draws.size)
    assert dist.mean == pytest.approx(draws.mean(), rel=0.02)
    assert dist.var == pytest.approx(draws.var(), rel=0.05)
    assert dist.quantile(0.9) == pytest.approx(np.quantile(draws, 0.9), rel=0.03)
    assert dist.cdf(dist.quantile(0.5)) >= 0.5 - 1e-9


def test_a_large_group_gets_the_clt_normal_with_summed_moments() -> None:
    x = samples()
    b = LengthBatch.empirical(x, 100)
    dist = group_sum(b, np.zeros(100))
    assert isinstance(dist, NormalSum)
    assert dist.mean == pytest.approx(100 * x.mean()) and dist.var == pytest.approx(100 * x.var())
    assert dist.quantile(0.5) == pytest.approx(dist.mean)
    assert group_sum(b.take(slice(0, 0))).mean == 0.0


def test_empirical_tables_fall_back_to_the_model_then_to_everything() -> None:
    t = make_table(200, models=("a", "b"), output_tokens=64)
    t = t.with_labels(slo_idx=(np.arange(200) % 10 == 0).astype(np.int16), slo_names=("chat", "rare"))
    lengths = EmpiricalLengths.fit(t, min_samples=30)
    assert ("a", "chat") in lengths.output and ("a", "rare") not in lengths.output
    assert np.array_equal(lengths.output_samples("a", "rare"), lengths.output[("a", ANY)])
    assert np.array_equal(lengths.output_samples("unknown", "chat"), lengths.output[(ANY, ANY)])
    assert lengths.mean_output("b", "chat") == 64.0
    assert lengths.output_batch("a", "chat", 3).probs.shape[0] == 3


def test_group_lengths_is_the_queue_planners_length_model() -> None:
    t = make_table(300, models=("a",), output_tokens=100)
    lengths = GroupLengths(EmpiricalLengths.fit(t))
    assert lengths("a", "interactive", 4, 2048) == (400.0, 0.0)
    assert lengths("a", "interactive", 0, 0) == (0.0, 0.0)

    class Doubling:
        def predict_for(self, model, slo_class, prompt_tokens, prompt_text=None):
            return LengthBatch(np.array([1.0, 2.0 * prompt_tokens[0]]), np.array([[0.5, 0.5]]))

    mean, var = GroupLengths(EmpiricalLengths.fit(t), Doubling())("a", "interactive", 2, 100)
    assert mean == pytest.approx(2 * (0.5 + 50.0)) and var == pytest.approx(2 * 0.25 * 99.0**2)


def test_group_remaining_output_from_a_model_and_class() -> None:
    t = make_table(300, models=("a",), output_tokens=100)
    lengths = EmpiricalLengths.fit(t)
    dist = group_remaining_output(lengths, "a", "interactive", np.array([0.0, 30.0, 99.0]))
    assert dist.mean == pytest.approx(100 + 70 + 1, abs=1.0) and dist.quantile(0.99) <= 172
