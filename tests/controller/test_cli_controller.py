"""The controller's commands through the real CLI (subprocesses): `fleetwise token`, `fleetwise plan`, `fleetwise
serve` (cron replanning on a sim backend, SIGTERM) and a short `fleetwise demo`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cli import ROOT, run_cli
from tests.controller.conftest import small_fleet


@pytest.fixture
def url(tmp_path: Path) -> str:
    target = f"sqlite:///{tmp_path / 'fw.db'}"
    assert run_cli("db", "upgrade", "--url", target).returncode == 0
    return target


def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(small_fleet().model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    return path


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_token_create_list_revoke(url: str) -> None:
    made = run_cli("token", "create", "--name", "ci", "--scopes", "read,plan", "--url", url, "--json")
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert body["scopes"] == ["read", "plan"] and body["secret"].startswith("fw_")
    assert run_cli("token", "revoke", "--name", "ci", "--url", url).returncode == 0
    listed = json.loads(run_cli("token", "list", "--url", url, "--json").stdout)
    assert [t["name"] for t in listed] == ["ci"] and "secret" not in listed[0] and listed[0]["revoked_at"]
    bad = run_cli("token", "create", "--name", "x", "--scopes", "root", "--url", url)
    assert bad.returncode == 2 and "scopes" in one_line(bad) and "root" in one_line(bad)


def test_plan_runs_one_cycle_and_prints_the_plan(url: str, tmp_path: Path) -> None:
    path = fleet_file(tmp_path)
    res = run_cli("plan", "test", "--fleet-file", str(path), "--policy", "dedicated", "--url", url, "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["cycle"]["outcome"] in ("planned", "unchanged") and body["status"] == "proposed"
    assert body["plan"]["policy"] == "dedicated" and body["cycle"]["timings_s"]["plan"] >= 0
    assert "no executor backend" in body["cycle"]["note"]


def test_plan_with_fleetwise_on_a_fleet_without_telemetry_or_workers(url: str, tmp_path: Path) -> None:
    """A first cycle: no telemetry, no backend. The program then serves nothing, and its round-off once made the
    expected goodput a hair below zero, which failed the cycle."""
    from tests.factories import EXAMPLES

    res = run_cli("plan", "spot-mixed", "--fleet-file", str(EXAMPLES / "spot-mixed.yaml"), "--policy", "fleetwise",
                  "--url", url, "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["cycle"]["outcome"] in ("planned", "unchanged") and body["status"] == "proposed"
    assert body["plan"]["expected"]["overall"]["goodput_tokens_per_s"] >= 0


def test_plan_refuses_bad_options_and_unmigrated_databases(url: str, tmp_path: Path) -> None:
    bad = run_cli("plan", "test", "--policy", "random", "--url", url)
    assert bad.returncode == 2 and "--policy" in one_line(bad)
    empty = run_cli("plan", "test", "--url", f"sqlite:///{tmp_path / 'empty.db'}")
    assert empty.returncode == 1 and "fleetwise db upgrade" in one_line(empty)


def test_bad_revision_budget_and_cron_are_one_line_naming_the_option(url: str, tmp_path: Path) -> None:
    for revision in ("nope", ""):
        res = run_cli("db", "upgrade", "--url", url, "--revision", revision)
        assert res.returncode == 2 and "--revision" in one_line(res) and "head" in one_line(res)
    budget = run_cli("plan", "test", "--fleet-file", str(fleet_file(tmp_path)), "--budget", "inf", "--url", url)
    assert budget.returncode == 2 and "--budget" in budget.stderr and "Traceback" not in budget.stderr
    cron = run_cli("serve", "--url", url, "--cron", "99 * * * *", timeout=60)
    assert cron.returncode == 2 and one_line(cron).startswith("error: --cron: '99 * * * *'")


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("not a database\n")
    target = f"sqlite:///{tmp_path / 'junk.db'}"
    for args in (["db", "current"], ["db", "upgrade"], ["token", "list"], ["plan", "test"]):
        res = run_cli(*args, "--url", target)
        assert res.returncode == 1 and "file is not a database" in one_line(res), args


def test_a_database_without_tables_points_to_db_upgrade(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    res = run_cli("token", "list", "--url", f"sqlite:///{tmp_path / 'empty.db'}")
    assert res.returncode == 1 and "no such table" in one_line(res) and "fleetwise db upgrade" in one_line(res)


def test_serve_replans_on_its_cron_and_stops_on_sigterm(url: str, tmp_path: Path) -> None:
    workers = tmp_path / "workers.yaml"
    workers.write_text("apiVersion: fleetwise/v1\nkind: Workers\nfleets:\n  test: {backend: sim}\n")
    secret = json.loads(run_cli("token", "create", "--name", "ops", "--scopes", "admin", "--url", url,
                                "--json").stdout)["secret"]
    env = {**os.environ, "FLEETWISE_POLICY": "dedicated", "FLEETWISE_HISTORY_S": "600",
           "FLEETWISE_FORECAST_INTERVAL_S": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve", "--port", "0", "--url", url, "--cron", "*/2 * * * * *",
         "--workers-file", str(workers)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = _listening(proc)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as c:
            assert c.get("/readyz").json()["status"] == "ready"
            spec = small_fleet().model_dump(mode="json")
            assert c.post("/v1/fleets", json={"spec": spec}).json()["has_backend"] is True
            cycles = _wait(lambda: c.get("/v1/fleets/test/cycles").json(), timeout_s=60)
            assert cycles[-1]["trigger"] == "cron" and cycles[-1]["outcome"] in ("planned", "unchanged")
            # The cron fires every 2 s: by the time the list is read, a newer cycle may have superseded the plan
            # the last cycle applied, so the check is that cron cycles apply plans, not which one is last.
            statuses = [p["status"] for p in c.get("/v1/fleets/test/plans").json()]
            assert "applied" in statuses, statuses
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_demo_runs_the_loop_and_compares_with_dedicated() -> None:
    res = run_cli("demo", "--duration", "60", "--history", "300", "--speedup", "20", "--cron", "*/2 * * * * *",
                  "--budget", "0.5", "--json", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    live = summary["live"]
    assert live["requests"] > 0 and live["completed"] > 0 and live["plans_executed"] >= 1
    assert live["cycles"]["planned"] + live["cycles"]["unchanged"] >= 2
    assert set(summary["simulated"]) == {"fleetwise", "dedicated"}
    assert summary["simulated"]["dedicated"]["requests"]["total"] == live["requests"]
    assert "fleetwise demo: summary" in res.stderr


def _listening(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING "):
            return line.split()[1]
        if not line and proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else "serve exited")
    raise AssertionError("fleetwise serve did not start")


def _wait(fetch, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = fetch()
        if found and all(c["outcome"] != "running" for c in found):
            return found
        time.sleep(0.3)
    raise AssertionError("no cron cycle ran")


def test_demo_with_spot_loses_three_gpus_mid_replay_and_compares_with_spotserve() -> None:
    res = run_cli("demo", "--spot", "--duration", "60", "--history", "300", "--speedup", "10", "--cron",
                  "*/2 * * * * *", "--budget", "0.5", "--json", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    live, simulated = summary["live"], summary["simulated"]
    assert "the provider reclaims 3 of them" in res.stderr
    assert live["requests"] > 0 and live["plans_executed"] >= 1
    assert live["spot_gpus_up"]["most"] == 4 and live["spot_gpus_up"]["fewest"] < 4  # the live view saw the wave
    # the provider's notices reached the controller through the API, each replanning at once
    assert live["preemption_notices"] == {"sent": 3, "failed": []}
    assert set(simulated) == {"fleetwise", "dedicated", "spotserve"}
    assert all(f["gpus_removed"] == 3 for f in simulated.values())
    assert simulated["spotserve"]["requests"]["total"] == live["requests"]
