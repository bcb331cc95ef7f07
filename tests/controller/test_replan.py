"""Replanning: cycles are recorded stage by stage; a cycle that fails (a fleet whose workers are all unreachable:
real sockets that refuse) is recorded with its error and the next tick runs normally; with two controllers on one
database exactly one replans per tick (the lease), and the other takes over when the holder stops."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import select

from controller.backends import BackendRegistry, FleetBackend
from controller.replan.cycle import run_cycle
from controller.replan.scheduler import ReplanScheduler
from controller.runtime import Controller
from core.requests import RequestTable
from db.fleets import put_fleet
from db.ingest import ingest_requests
from db.models import ReplanRunRow
from db.runs import list_replan_runs
from db.telemetry import RequestOutcomes
from optimizers.fleetwise import FleetwisePlanner
from tests.controller.conftest import FLEET, closed_port, make_controller, small_fleet


def with_fleets(ctl: Controller, *names: str) -> Controller:
    with ctl.sessions.begin() as s:
        for name in names:
            put_fleet(s, spec=small_fleet(name))
    return ctl


def test_a_failing_fleet_is_recorded_and_the_next_tick_runs_normally(db_url: str) -> None:
    ctl = make_controller(db_url)
    port = closed_port()
    dead = {g: f"http://127.0.0.1:{port}" for g in small_fleet("broken").gpu_ids()}
    ctl.backends = BackendRegistry(ctl.clock, {FLEET: FleetBackend(backend="sim"),
                                               "broken": FleetBackend(backend="http", workers=dead,
                                                                      status_timeout_s=2)})
    with_fleets(ctl, FLEET, "broken")
    scheduler = ReplanScheduler(ctl, cron="*/5 * * * * *")
    try:
        for tick in range(2):
            results = {r.fleet: r for r in scheduler.tick()}
            assert results["broken"].outcome == "failed" and results["broken"].failed_stage == "observe"
            assert "no worker of fleet broken answered" in results["broken"].error
            assert "refused" in results["broken"].error.lower() or "connect" in results["broken"].error.lower()
            assert results[FLEET].outcome == ("planned" if tick == 0 else "unchanged"), results[FLEET]
        with ctl.sessions.begin() as s:
            broken = list_replan_runs(s, fleet="broken")
            healthy = list_replan_runs(s, fleet=FLEET)
            assert [r.outcome for r in broken] == ["failed", "failed"] and all(r.error for r in broken)
            assert all(r.finished_at and "observe" in r.timings_s and r.plan_id is None for r in broken)
            assert sorted(r.outcome for r in healthy) == ["planned", "unchanged"]
            assert all(r.plan_id and r.inputs_digest and r.forecast_ids for r in healthy)
        text = ctl.metrics.render().decode()
        assert 'fleetwise_replan_failures_total{reason="observe"} 2.0' in text
        assert 'fleetwise_replan_cycles_total{outcome="failed"} 2.0' in text
    finally:
        ctl.close()


def test_two_controllers_one_replans_per_tick_and_the_other_takes_over(db_url: str) -> None:
    first, second = (with_fleets(make_controller(db_url), FLEET) for _ in range(2))
    schedulers = [ReplanScheduler(c, cron="0 * * * *") for c in (first, second)]
    try:
        holders = []
        for _ in range(4):
            with ThreadPoolExecutor(2) as pool:  # both controllers tick at once
                out = list(pool.map(ReplanScheduler.tick, schedulers))
            ran = [i for i in (0, 1) if out[i]]
            assert len(ran) == 1, out
            holders.append(ran[0])
        assert len(set(holders)) == 1  # the holder renews its lease at every tick
        schedulers[holders[0]].stop()  # gives the lease back
        assert schedulers[1 - holders[0]].tick() and not schedulers[holders[0]].tick()
        with first.sessions.begin() as s:
            runs = list(s.scalars(select(ReplanRunRow)))
        assert len(runs) == 5 and {r.trigger for r in runs} == {"cron"}
        assert [r.holder for r in sorted(runs, key=lambda r: r.started_at)] == \
            [schedulers[holders[0]].ctl.settings.holder] * 4 + [schedulers[1 - holders[0]].ctl.settings.holder]
    finally:
        first.close()
        second.close()


def test_cron_ticks_drive_cycles_in_one_controller_of_two(db_url: str) -> None:
    ctls = [with_fleets(make_controller(db_url), FLEET) for _ in range(2)]
    schedulers = [ReplanScheduler(c, cron="* * * * * *").start() for c in ctls]  # every second
    try:
        time.sleep(3.5)
    finally:
        for s in schedulers:
            s.scheduler.shutdown(wait=True)
    with ctls[0].sessions.begin() as s:
        runs = list(s.scalars(select(ReplanRunRow)))
    held = [c.metrics.ticks.labels(lease="held")._value.get() for c in ctls]
    assert len(runs) >= 2 and len(runs) == sum(held)
    assert len({r.holder for r in runs}) == 1 and min(held) == 0
    assert all(s.num_ticks >= 2 for s in schedulers)
    for c in ctls:
        c.close()


def test_the_fleetwise_planner_gets_the_output_lengths_the_telemetry_knows(db_url: str) -> None:
    """The live cycle hands its queue planner the group lengths of completed requests (the what-if policy's
    `ObservedLengths`); dropped requests, which produced no whole output, are left out."""
    ctl = with_fleets(make_controller(db_url), FLEET)
    rng = np.random.default_rng(5)
    n = 300
    now = ctl.clock.now()
    table = RequestTable.from_columns(
        arrival_s=np.sort(now - 1500 + rng.uniform(0, 1400, n)), model_idx=np.arange(n) % 2,
        slo_idx=(np.arange(n) % 5 == 0).astype(int), prompt_tokens=rng.integers(50, 2000, n),
        output_tokens=rng.integers(10, 400, n), model_names=("chat", "small"), slo_names=("interactive", "batch"))
    dropped = np.arange(n) % 7 == 3
    table = replace(table, output_tokens=np.where(dropped, 50_000, table.output_tokens))
    outcomes = RequestOutcomes.from_columns(outcome=np.where(dropped, "dropped", "completed").tolist(),
                                            drop_reason=[("no_replica" if d else None) for d in dropped])
    try:
        with ctl.sessions.begin() as s:
            ingest_requests(s, fleet=FLEET, table=table, outcomes=outcomes)
        result = run_cycle(ctl, FLEET, trigger="manual", policy="fleetwise")
        assert result.outcome in ("planned", "unchanged"), result
        planner = next(p for p in ctl.fleet(FLEET).planners.values() if isinstance(p, FleetwisePlanner))
        rows = (table.model_idx == 0) & (table.slo_idx == 0) & ~dropped
        out = table.output_tokens[rows].astype(float)
        mean, var = planner.lengths("chat", "interactive", 3, 900)
        assert mean == pytest.approx(3 * out.mean()) and var == pytest.approx(3 * out.var())
    finally:
        ctl.close()
