"""Metrics by hand: TTFT/TPOT, attainment with drops and offline classes, goodput, cost, the timeline."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.metrics import MetricsRecorder, SimResult
from tests.simulator.conftest import small_fleet, table
from workers.sequence import Sequence


def done(row: int, arrival: float, first: float, finish: float, generated: int) -> Sequence:
    seq = Sequence(row, "chat", 100, generated, arrival)
    seq.first_token_s, seq.finish_s, seq.num_generated = first, finish, generated
    return seq


def result(rec: MetricsRecorder, **kw) -> SimResult:
    totals = {"gpu_seconds_by_pool": {"h100": 7200.0}, "plans": 1, "wall_s": 0.5, "sim_end_s": 120.0,
              "num_events": 10, "window_s": 60.0}
    totals.update(kw)
    return SimResult.from_recorder(rec, small_fleet(), **totals)


def test_attainment_counts_drops_as_misses_and_offline_work_as_met_when_done() -> None:
    # interactive: TTFT ≤ 1 s and TPOT ≤ 0.1 s; batch: offline.
    t = table([0.0, 10.0, 20.0, 70.0], slo_idx=np.array([0, 0, 1, 0]))
    rec = MetricsRecorder(t)
    rec.finished([done(0, 0.0, 0.5, 1.4, 10),  # TTFT 0.5, TPOT 0.1: met
                  done(1, 10.0, 12.0, 12.9, 10),  # TTFT 2.0: missed
                  done(2, 20.0, 80.0, 90.0, 11)])  # offline, slow but done: met
    rec.dropped(3, "no_replica_timeout")
    rec.check_complete()
    f = result(rec).figures()
    assert f["slo_attainment"] == 0.5 and f["ttft_attainment"] == 0.5 and f["tpot_attainment"] == 0.75
    assert f["per_class"]["interactive"] == {"slo_attainment": pytest.approx(1 / 3), "ttft_attainment": pytest.approx(1 / 3),
                                             "tpot_attainment": pytest.approx(2 / 3), "requests": 3}
    assert f["requests"] == {"total": 4, "completed": 3, "dropped": 1}
    assert f["dropped_by_reason"] == {"no_replica_timeout": 1}
    assert f["ttft_s"]["p50"] == pytest.approx(2.0) and f["tpot_s"]["p50"] == pytest.approx(0.1)
    # Goodput: 10 + 11 tokens of attaining requests over the span from the first arrival to the last finish (90 s).
    assert f["goodput_tokens_per_s"] == pytest.approx(21 / 90)
    assert f["gpu_hours"] == 2.0 and f["cost_usd"] == pytest.approx(2.0 * 4.50)
    assert f["timeline"]["t_s"] == [0.0, 60.0] and f["timeline"]["requests"] == [3, 1]
    assert f["timeline"]["slo_attainment"] == [pytest.approx(2 / 3), 0.0]


def test_the_timeline_averages_billed_gpus_per_window() -> None:
    t = table([0.0, 119.0])
    rec = MetricsRecorder(t)
    rec.gpus_billed(0.0, 2)
    rec.gpus_billed(30.0, 4)
    rec.gpus_billed(90.0, 1)
    rec.finished([done(0, 0.0, 1.0, 2.0, 2), done(1, 119.0, 120.0, 121.0, 2)])
    assert result(rec).timeline()["gpus_active"] == [pytest.approx(3.0), pytest.approx(2.5)]


def test_a_request_lost_or_ended_twice_is_an_error() -> None:
    rec = MetricsRecorder(table([0.0, 1.0]))
    rec.finished([done(0, 0.0, 0.1, 0.2, 2)])
    with pytest.raises(AssertionError, match="neither completed nor dropped"):
        rec.check_complete()
    rec.dropped(1, "x")
    with pytest.raises(AssertionError, match="ended twice"):
        rec.dropped(1, "y")
    rec.finished([done(0, 0.0, 0.1, 0.2, 2)])
    with pytest.raises(AssertionError, match="completed twice"):
        rec.flush()
