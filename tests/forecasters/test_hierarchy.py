"""A total forecast bottom-up over children with different dynamics beats the direct forecast of the sum."""

from __future__ import annotations

import numpy as np

from forecasters.hierarchy import TotalForecaster
from forecasters.selection import LoadConfig
from tests.forecasters.synthetic import mean_reverting, seasonal


def children(n: int = 900) -> np.ndarray:
    on_off = seasonal(n, 6, level=300.0, amplitude=300.0, noise=5.0, seed=1)  # an hourly batch job
    return np.stack([on_off, mean_reverting(n, level=400.0, seed=2), np.full(n, 80.0)])


def test_bottom_up_wins_when_children_differ_and_the_forecast_is_their_sum() -> None:
    kids = children()
    total = TotalForecaster(config=LoadConfig(max_lead=6))
    total.fit(kids[:, :700], interval_s=600.0, names=["batch", "bursty", "flat"])
    assert total.use_bottom_up and total.method.startswith("bottom_up")
    fc = total.forecast(6)
    assert np.allclose(fc.mean, sum(c.point_forecast(6) for c in total.children))
    stacked = np.stack([fc.quantile(q) for q in sorted(fc.quantiles)])
    assert np.all(np.diff(stacked, axis=0) >= 0)
    # out of sample, on the last 200 intervals, bottom-up beats the direct forecast of the total at lead 1
    y = kids.sum(axis=0)
    origins = np.arange(699, 899)
    bu = np.abs(total.paths(kids, 1)[origins, 0] - y[origins + 1]).sum()
    direct = np.abs(total.direct.paths(y, 1)[origins, 0] - y[origins + 1]).sum()
    assert bu < direct


def test_a_single_flat_child_falls_back_to_the_direct_forecast_of_its_total() -> None:
    total = TotalForecaster(config=LoadConfig(max_lead=3))
    total.fit(np.zeros((2, 50)), interval_s=600.0)
    assert not total.use_bottom_up and total.method == "zeros"


def test_modes_auto_and_direct() -> None:
    kids = children(700)
    auto = TotalForecaster(config=LoadConfig(max_lead=6), mode="auto")
    auto.fit(kids, interval_s=600.0)
    assert auto.use_bottom_up  # the direct forecast does not beat bottom-up here
    direct = TotalForecaster(config=LoadConfig(max_lead=6), mode="direct")
    direct.fit(kids, interval_s=600.0)
    assert not direct.use_bottom_up and direct.forecast(3).method == direct.direct.method
    assert direct.bottom_up_score is not None  # still backtested, for the report


def test_a_gap_shared_by_every_child_is_unknown_for_the_total_and_carried_forward() -> None:
    kids = children()
    kids[:, 650:660] = np.nan  # the collector was down: no child has data
    total = TotalForecaster(config=LoadConfig(max_lead=3))
    total.fit(kids[:, :700], interval_s=600.0, names=["batch", "bursty", "flat"])
    assert total.use_bottom_up and total.bottom_up_score is not None
    assert all(np.isfinite(w) for w in total.bottom_up_score.wape_by_lead.values())
    assert all(np.isfinite(r).all() for r in total.calibration.residuals)
    paths = total.paths(kids, 1)[:, 0]
    assert np.all(np.isfinite(paths)) and np.all(paths[649:660] > 150.0)  # not zero: the flat child alone is 80
    fc = total.forecast(3)
    assert np.all(np.isfinite(fc.quantile(0.99)))
