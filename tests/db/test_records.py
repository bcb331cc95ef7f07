"""Forecasts, replanning runs, what-if runs, API tokens and worker snapshots."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.errors import InputError, NotFoundError
from core.forecast import BacktestScore, Forecast
from core.status import ReplicaStatus, WorkerStatus
from db.fleets import put_fleet
from db.forecasts import get_forecast, latest_forecasts, save_forecast, to_forecast
from db.models import ApiTokenRow
from db.plans import create_plan
from db.runs import (
    create_whatif_run,
    finish_replan_run,
    finish_whatif_run,
    get_whatif_run,
    list_replan_runs,
    start_replan_run,
    start_whatif_run,
)
from db.tokens import allows, authenticate_token, create_token, revoke_token
from db.workers import health_history, latest_worker_statuses, record_worker_statuses
from tests.db.builders import make_plan
from tests.factories import make_fleet


def _forecast(series: str, start_s: float) -> Forecast:
    return Forecast(
        series=series, interval_s=60.0, start_s=start_s, mean=(1.0, 2.0), method="ets",
        quantiles={0.1: (0.5, 1.0), 0.9: (2.0, 3.5)},
        backtest=BacktestScore(method="ets", wape_by_lead={1: 0.2}, coverage={"p10-p90": 0.8}, num_origins=5),
    )


def test_forecasts_round_trip_and_the_latest_per_series(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        first = save_forecast(s, fleet="test", forecast=_forecast("chat", 0.0))
        save_forecast(s, fleet="test", forecast=_forecast("chat", 60.0))
        save_forecast(s, fleet="test", forecast=_forecast("total", 0.0))
    with sessions.begin() as s:
        assert to_forecast(get_forecast(s, forecast_id=first.id)) == _forecast("chat", 0.0)
        latest = latest_forecasts(s, fleet="test")
        assert [(r.series, r.start_s) for r in latest] == [("chat", 60.0), ("total", 0.0)]
        assert [r.series for r in latest_forecasts(s, fleet="test", series=["total"])] == ["total"]


def test_replan_runs_record_success_and_failure(sessions: sessionmaker[Session]) -> None:
    plan = make_plan()
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        create_plan(s, plan=plan, advisory=False)
        start_replan_run(s, fleet="test", cycle_id="c1", trigger="cron", holder="ctl-a")
        finish_replan_run(s, cycle_id="c1", outcome="planned", inputs_digest="abc", plan_id=plan.plan_id,
                          timings_s={"forecast": 0.5, "placement": 1.25})
        start_replan_run(s, fleet="test", cycle_id="c2", trigger="cron")
        finish_replan_run(s, cycle_id="c2", outcome="failed", error="solver crashed")
        with pytest.raises(InputError, match="already recorded"):
            start_replan_run(s, fleet="test", cycle_id="c2", trigger="cron")
        with pytest.raises(InputError, match="outcome.*planned"):
            finish_replan_run(s, cycle_id="c2", outcome="running")
    with sessions.begin() as s:
        runs = {r.cycle_id: r for r in list_replan_runs(s, fleet="test")}
        assert runs["c1"].timings_s == {"forecast": 0.5, "placement": 1.25} and runs["c1"].plan_id == plan.plan_id
        assert (runs["c2"].outcome, runs["c2"].error) == ("failed", "solver crashed")
        assert runs["c1"].started_at.tzinfo is not None and runs["c1"].finished_at >= runs["c1"].started_at


def test_whatif_runs_go_queued_running_finished(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        run = create_whatif_run(s, config={"policies": ["dedicated", "qlm"]})
        start_whatif_run(s, run_id=run.run_id)
        with pytest.raises(InputError, match="is running"):
            start_whatif_run(s, run_id=run.run_id)
        with pytest.raises(InputError, match="exactly one"):
            finish_whatif_run(s, run_id=run.run_id)
        finish_whatif_run(s, run_id=run.run_id, report={"policies": {"qlm": {"slo_attainment": 0.9}}})
    with sessions.begin() as s:
        done = get_whatif_run(s, run_id=run.run_id)
        assert done.status == "succeeded" and done.report["policies"]["qlm"]["slo_attainment"] == 0.9
        with pytest.raises(NotFoundError):
            get_whatif_run(s, run_id="nope")


def test_tokens_store_only_a_hash_and_honour_scopes_and_revocation(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        _, reader_secret = create_token(s, name="dashboard", scopes=["read"])
        _, admin_secret = create_token(s, name="ops", scopes=["admin"])
        with pytest.raises(InputError, match="scopes.*'root'.*read, plan, admin"):
            create_token(s, name="x", scopes=["root"])
        with pytest.raises(InputError, match="taken"):
            create_token(s, name="ops", scopes=["read"])
    with sessions.begin() as s:
        stored = [(r.name, r.secret_sha256) for r in s.scalars(select(ApiTokenRow))]
        assert all(reader_secret not in h and admin_secret not in h for _, h in stored)
        reader = authenticate_token(s, secret=reader_secret)
        assert reader is not None and reader.last_used_at is not None
        assert allows(reader, "read") and not allows(reader, "plan")
        assert allows(authenticate_token(s, secret=admin_secret), "plan")
        assert authenticate_token(s, secret="fw_wrong") is None
        revoke_token(s, name="dashboard")
        assert authenticate_token(s, secret=reader_secret) is None


def _status(worker: str, time_s: float, healthy: bool = True) -> WorkerStatus:
    replica = ReplicaStatus(replica_id=f"chat@{worker}", model="chat", residency="active", gpu_ids=(worker,))
    return WorkerStatus(worker_id=worker, pool="h100", gpu_type="H100-SXM", time_s=time_s, healthy=healthy,
                        memory_total_gib=80.0, replicas=(replica,))


def test_latest_worker_status_per_worker(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        record_worker_statuses(s, fleet="test", statuses=[_status("h100/0", 1.0), _status("h100/1", 1.0)])
        record_worker_statuses(s, fleet="test", statuses=[_status("h100/0", 2.0, healthy=False)])
    with sessions.begin() as s:
        latest = latest_worker_statuses(s, fleet="test")
    assert latest == [_status("h100/0", 2.0, healthy=False), _status("h100/1", 1.0)]


def test_health_history_reads_every_snapshot_in_the_window_oldest_first(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        record_worker_statuses(s, fleet="test", statuses=[_status("h100/1", 5.0), _status("h100/0", 4.0)])
        record_worker_statuses(s, fleet="test", statuses=[_status("h100/0", 9.0, healthy=False)])
        record_worker_statuses(s, fleet="test", statuses=[_status("h100/0", 20.0)])
    with sessions.begin() as s:
        rows = health_history(s, fleet="test", start_s=4.0, end_s=10.0)
    assert rows == [(4.0, "h100/0", "h100", True), (5.0, "h100/1", "h100", True), (9.0, "h100/0", "h100", False)]
