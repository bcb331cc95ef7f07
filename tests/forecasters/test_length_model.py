"""The torch output-length model learns what is known at arrival and keeps its quantiles calibrated."""

from __future__ import annotations

import numpy as np
import pytest

from core.requests import RequestTable
from forecasters.backtest import pinball_loss
from forecasters.length_model import LengthModelConfig, OutputLengthModel
from forecasters.lengths import LengthBatch, group_sum

CONFIG = LengthModelConfig(epochs=12, hidden=32, num_buckets=16)


def synthetic(n: int, seed: int, *, text: bool = False) -> RequestTable:
    """Model 'sum' answers at about 2× the prompt; model 'chat' around 40 tokens regardless; with text, the word
    'essay' makes 'chat' answers ten times longer."""
    rng = np.random.default_rng(seed)
    prompt = np.ceil(rng.lognormal(4.0, 0.7, n)).astype(int)
    model = rng.integers(0, 2, n)
    essay = rng.random(n) < 0.3
    base = np.where(model == 0, 2.0 * prompt, 40.0 * np.where(essay & text, 10.0, 1.0))
    output = np.maximum(np.ceil(base * rng.lognormal(0.0, 0.25, n)), 1).astype(int)
    texts = [("write an essay" if e else "quick question") for e in essay] if text else None
    return RequestTable.from_columns(arrival_s=np.arange(n, dtype=float), model_idx=model, slo_idx=np.zeros(n),
                                     prompt_tokens=prompt, output_tokens=output, model_names=("sum", "chat"),
                                     slo_names=("default",), prompt_text=texts)


@pytest.fixture(scope="module")
def trained() -> tuple[OutputLengthModel, RequestTable, RequestTable]:
    model = OutputLengthModel(CONFIG)
    train = synthetic(3000, 0)
    model.fit(train)
    return model, train, synthetic(1000, 1)


def test_conditional_quantiles_beat_the_unconditional_distribution(trained) -> None:
    model, train, test = trained
    y = test.output_tokens.astype(float)
    cond = model.predict(test)
    uncond = LengthBatch.empirical(train.output_tokens, len(test))
    for q in (0.5, 0.9):
        assert pinball_loss(y, cond.quantile(q), q) < 0.6 * pinball_loss(y, uncond.quantile(q), q)
    assert np.mean(y <= cond.quantile(0.9)) == pytest.approx(0.9, abs=0.04)
    assert np.allclose(cond.probs.sum(axis=1), 1.0)


def test_predict_for_one_model_and_group_sums(trained) -> None:
    model, _, _ = trained
    short = model.predict_for("sum", "default", np.array([20, 20]))
    long = model.predict_for("sum", "default", np.array([400, 400]))
    assert long.mean()[0] > 5 * short.mean()[0]
    assert group_sum(long, np.array([0.0, 100.0])).mean < 2 * long.mean()[0]
    unseen = model.predict_for("never-seen", "default", np.array([50]))  # no indicator: still a distribution
    assert np.isclose(unseen.probs.sum(), 1.0)


def test_prompt_text_is_used_when_present() -> None:
    model = OutputLengthModel(CONFIG)
    model.fit(synthetic(3000, 2, text=True))
    test = synthetic(600, 3, text=True)
    mean = model.predict(test).mean()
    chat = test.model_idx == 1
    essay = np.array([t.startswith("write") for t in test.prompt_text])
    assert mean[chat & essay].mean() > 4 * mean[chat & ~essay].mean()


def test_fitting_is_deterministic_and_needs_data() -> None:
    a, b = OutputLengthModel(CONFIG), OutputLengthModel(CONFIG)
    t = synthetic(500, 4)
    a.fit(t)
    b.fit(t)
    assert np.allclose(a.predict(t).probs, b.predict(t).probs)
    with pytest.raises(ValueError, match="at least 50"):
        OutputLengthModel(CONFIG).fit(synthetic(20, 5))
