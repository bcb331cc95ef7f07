"""Bulk telemetry ingest and the queries forecasters make, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.errors import InputError, NotFoundError
from core.requests import RequestTable
from db.fleets import ensure_fleet
from db.ingest import ingest_requests
from db.models import RequestTelemetryRow
from db.telemetry import RequestOutcomes, read_telemetry, request_counts
from tests.factories import make_table

MODELS = ("chat", "code", "tail-00")


def _batch(n: int, seed: int = 0) -> tuple[RequestTable, RequestOutcomes]:
    rng = np.random.default_rng(seed)
    table = make_table(n, models=MODELS, rate_per_s=50.0, seed=seed)
    dropped = rng.random(n) < 0.1
    ttft = np.where(dropped, np.nan, rng.exponential(0.2, n))
    outcomes = RequestOutcomes.from_columns(
        outcome=np.where(dropped, "dropped", "completed"),
        ttft_s=ttft, tpot_s=np.where(dropped, np.nan, 0.03), e2e_s=np.where(dropped, np.nan, ttft + 3.0),
        finish_s=table.arrival_s + 3.0,
        drop_reason=["kv_exhausted" if d else None for d in dropped],
        worker_id=[f"h100/{i % 4}" for i in range(n)],
        replica_id=[None if d else f"r{i % 2}" for i, d in enumerate(dropped)],
    )
    return table, outcomes


def _count(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as s:
        return s.scalar(select(func.count()).select_from(RequestTelemetryRow))


def test_ingest_round_trips_every_column_exactly(sessions: sessionmaker[Session]) -> None:
    table, outcomes = _batch(2_500)
    with sessions.begin() as s:
        ensure_fleet(s, name="f")
        assert ingest_requests(s, fleet="f", table=table, outcomes=outcomes, chunk_rows=1_000) == 2_500
    assert _count(sessions) == 2_500
    with sessions.begin() as s:
        got, got_out = read_telemetry(s, fleet="f", start_s=0.0, end_s=1e9)
    np.testing.assert_array_equal(got.arrival_s, table.arrival_s)
    np.testing.assert_array_equal(got.request_id, table.request_id)
    np.testing.assert_array_equal(got.prompt_tokens, table.prompt_tokens)
    assert [got.model_of(i) for i in range(len(got))] == [table.model_of(i) for i in range(len(table))]
    for col in ("ttft_s", "tpot_s", "e2e_s", "finish_s"):  # NaN went in as NULL and comes back as NaN
        np.testing.assert_array_equal(getattr(got_out, col), getattr(outcomes, col))
    for col in ("outcome", "drop_reason", "worker_id", "replica_id"):
        assert got_out.labels(col).tolist() == outcomes.labels(col).tolist()


def test_unknown_latencies_are_sql_null(sessions: sessionmaker[Session]) -> None:
    table, outcomes = _batch(200)
    with sessions.begin() as s:
        ensure_fleet(s, name="f")
        ingest_requests(s, fleet="f", table=table, outcomes=outcomes)
        nulls = s.scalar(select(func.count()).where(RequestTelemetryRow.ttft_s.is_(None)))
    assert nulls == int(np.isnan(outcomes.ttft_s).sum()) > 0


def test_arrivals_only_batches_record_outcome_unknown(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        ensure_fleet(s, name="f")
        ingest_requests(s, fleet="f", table=make_table(50))
        _, outcomes = read_telemetry(s, fleet="f", start_s=0.0, end_s=1e9)
    assert set(outcomes.labels("outcome")) == {"unknown"} and np.isnan(outcomes.ttft_s).all()


def test_request_counts_match_numpy_binning(sessions: sessionmaker[Session]) -> None:
    table, outcomes = _batch(3_000, seed=3)
    with sessions.begin() as s:
        ensure_fleet(s, name="f")
        ingest_requests(s, fleet="f", table=table, outcomes=outcomes)
        counts = request_counts(s, fleet="f", start_s=5.0, end_s=55.0, interval_s=10.0)
        only = request_counts(s, fleet="f", start_s=5.0, end_s=55.0, interval_s=10.0, models=["tail-00", "none"])
    assert counts.models == tuple(sorted(MODELS)) and counts.counts.shape == (3, 5)
    for m, name in enumerate(counts.models):
        arrivals = table.for_model(name).arrival_s
        expected, _ = np.histogram(arrivals, bins=np.arange(5.0, 56.0, 10.0))
        np.testing.assert_array_equal(counts.counts[m], expected)
    np.testing.assert_array_equal(only.series("tail-00"), counts.series("tail-00"))
    assert only.series("none").sum() == 0


def test_a_bad_batch_writes_nothing(sessions: sessionmaker[Session]) -> None:
    table, outcomes = _batch(100)
    bad = RequestOutcomes(**{**outcomes.__dict__, "ttft_s": np.full(100, -1.0)})
    with sessions.begin() as s:
        ensure_fleet(s, name="f")
    with pytest.raises(InputError, match="ttft_s"), sessions.begin() as s:
        ingest_requests(s, fleet="f", table=table, outcomes=outcomes)  # fine on its own …
        ingest_requests(s, fleet="f", table=table, outcomes=bad)  # … but the transaction fails as a whole
    assert _count(sessions) == 0


def test_bad_input_names_the_column(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(InputError, match="outcome.*'exploded'.*completed"):
        RequestOutcomes.from_columns(outcome=["completed", "exploded"])
    table, outcomes = _batch(10)
    with sessions.begin() as s:
        ensure_fleet(s, name="f")
        with pytest.raises(InputError, match="outcomes"):
            ingest_requests(s, fleet="f", table=make_table(11), outcomes=outcomes)
        long_name = table.with_labels(model_names=["x" * 200, "b", "c"])
        with pytest.raises(InputError, match="model.*at most 128"):
            ingest_requests(s, fleet="f", table=long_name)
        with pytest.raises(NotFoundError, match="unknown fleet 'nope'.*known: f"):
            ingest_requests(s, fleet="nope", table=table)
    with pytest.raises(InputError, match="interval_s"), sessions.begin() as s:
        request_counts(s, fleet="f", start_s=0, end_s=10, interval_s=0)


def test_times_that_contradict_each_other_in_a_row_are_refused_naming_the_request(
        sessions: sessionmaker[Session]) -> None:
    table, outcomes = _batch(10)
    early = outcomes.finish_s.copy()
    early[4] = table.arrival_s[4] - 0.5
    late_first = outcomes.ttft_s.copy()
    served = int(np.flatnonzero(np.isfinite(outcomes.e2e_s))[0])
    late_first[served] = outcomes.e2e_s[served] + 1.0
    with sessions.begin() as s:
        ensure_fleet(s, name="f")
        with pytest.raises(InputError, match=rf"finish_s: .* \(request_id {table.request_id[4]}\) is before the"):
            ingest_requests(s, fleet="f", table=table, outcomes=RequestOutcomes(**{**outcomes.__dict__,
                                                                                  "finish_s": early}))
        with pytest.raises(InputError, match=r"ttft_s: .* is after the request ended; at most the request's e2e_s"):
            ingest_requests(s, fleet="f", table=table, outcomes=RequestOutcomes(**{**outcomes.__dict__,
                                                                                  "ttft_s": late_first}))
        rounding = outcomes.finish_s.copy()
        rounding[4] = table.arrival_s[4] - 1e-7  # the sender's float rounding, not a contradiction
        ingest_requests(s, fleet="f", table=table, outcomes=RequestOutcomes(**{**outcomes.__dict__,
                                                                              "finish_s": rounding}))
    assert _count(sessions) == 10


def test_outcome_columns_from_plain_lists() -> None:
    outcomes = RequestOutcomes.from_columns(outcome=["completed", "dropped"], ttft_s=[0.25, None],
                                            drop_reason=[None, "timeout"])
    assert np.isnan(outcomes.ttft_s[1]) and outcomes.labels("drop_reason").tolist() == [None, "timeout"]
    with pytest.raises(InputError, match="ttft_s.*'fast'.*number of seconds"):
        RequestOutcomes.from_columns(outcome=["completed"], ttft_s=["fast"])
    with pytest.raises(InputError, match="worker_id.*one value per request"):
        RequestOutcomes.from_columns(outcome=["completed"], worker_id=["a", "b"])
