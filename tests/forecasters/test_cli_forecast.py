"""`fleetwise forecast` end to end through the real CLI, and the trace sources behind it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError, NotFoundError
from forecasters.sources import load_source
from tests.cli import run_cli
from tests.factories import make_table
from tests.workloads.helpers import write_servegen
from workloads.canonical import write_canonical


def servegen_folder(tmp_path: Path) -> Path:
    rows = {c: [f"{600 * w},{(c + 1) * (1 + np.sin(w / 6)):.4f},1.0,Gamma,1.0,1.0" for w in range(72)]
            for c in (3, 7)}
    return write_servegen(tmp_path / "m-test", rows)


def canonical(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    write_canonical(make_table(6000, models=("chat", "code"), rate_per_s=4.0, seed=1), path)
    return path


def test_sources_read_every_kind(tmp_path: Path) -> None:
    sg = load_source(servegen_folder(tmp_path), interval_s=1200.0)
    assert sg.kind == "servegen" and sg.children.counts.shape == (2, 36) and sg.name == "total"
    # the first 20-minute interval holds two windows of clients 3 and 7 (rates 4 and 8 per second, times 1 + sin)
    assert sg.target()[0] == pytest.approx(600 * 12 * (2 + np.sin(1 / 6)), rel=1e-4)
    assert load_source(servegen_folder(tmp_path), interval_s=600.0, model="7").name == "m-test-c007"
    req = load_source(canonical(tmp_path), interval_s=60.0, model="code")
    assert req.kind == "requests" and req.target().sum() > 2000
    with pytest.raises(InputError, match="whole number of ServeGen windows"):
        load_source(servegen_folder(tmp_path), interval_s=900.0)
    with pytest.raises(NotFoundError, match="unknown model 'nope'"):
        load_source(canonical(tmp_path), interval_s=60.0, model="nope")


def test_servegen_windows_of_no_data_are_missing_not_zero(tmp_path: Path) -> None:
    # every client silent in windows 10-11 between busy windows (a collection gap); in 30-31 too, but the
    # windows around them are nearly empty, so that silence is quiet traffic; windows 0-1 start the trace silent
    def rate(c: int, w: int) -> float:
        if w in (0, 1, 10, 11, 30, 31):
            return 0.0
        return 0.001 if w in (29, 32) else c + 1.0

    rows = {c: [f"{600 * w},{rate(c, w)},1.0,Gamma,1.0,1.0" if rate(c, w) else f"{600 * w},0,0,,0,0"
                for w in range(40)] for c in (3, 7)}
    folder = write_servegen(tmp_path / "m-gap", rows)
    per_window = load_source(folder, interval_s=600.0)
    gaps = np.isnan(per_window.children.counts)
    assert np.flatnonzero(gaps.any(axis=0)).tolist() == [10, 11] and gaps[:, [10, 11]].all()
    assert per_window.target()[[0, 1, 30, 31]].tolist() == [0.0] * 4
    # a 30-minute interval holding windows 9-11 counts its one observed window for the whole interval
    longer = load_source(folder, interval_s=1800.0)
    assert longer.target()[3] == pytest.approx(3 * 600 * (4.0 + 8.0))
    assert np.isnan(load_source(folder, interval_s=1200.0).target()[5])  # windows 10 and 11: nothing observed
    res = run_cli("forecast", "--trace", str(folder), "--interval", "10m", "--horizon", "30m", "--json",
                  "--workers", "1")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert all(v > 5_000 for v in doc["forecast"]["mean"])  # 12 requests a second: 7,200 per 600 s
    assert any("2 intervals without data" in note for note in doc["notes"])


def test_cli_prints_the_backtest_and_forecast_and_writes_a_plot(tmp_path: Path) -> None:
    plot = tmp_path / "bands.png"
    res = run_cli("forecast", "--trace", str(canonical(tmp_path)), "--model", "chat", "--interval", "30s",
                  "--horizon", "2m", "--plot", str(plot))
    assert res.returncode == 0, res.stderr
    assert "Backtest — chat" in res.stdout and "persistence" in res.stdout and "✓" in res.stdout
    assert "Forecast — chat" in res.stdout and "+2m" in res.stdout
    assert plot.stat().st_size > 10_000


def test_cli_json_on_a_servegen_folder_forecasts_the_total(tmp_path: Path) -> None:
    res = run_cli("forecast", "--trace", str(servegen_folder(tmp_path)), "--interval", "10m", "--horizon", "30m",
                  "--json", "--workers", "1")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["series"] == "total" and doc["kind"] == "servegen" and len(doc["forecast"]["mean"]) == 3
    assert any(row["chosen"] for row in doc["backtest"])
    assert {row["method"] for row in doc["backtest"]} >= {"persistence", "bottom_up"}


@pytest.mark.parametrize("args, message", [
    (["--interval", "ten"], "--interval: 'ten' is not allowed"),
    (["--interval", "10m", "--horizon", "1m"], "--horizon"),
    (["--model", "nope"], "unknown model 'nope'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    res = run_cli("forecast", "--trace", str(canonical(tmp_path)), *args)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_cli_missing_trace_names_the_option(tmp_path: Path) -> None:
    res = run_cli("forecast", "--trace", str(tmp_path / "missing.csv"), "--interval", "1m", "--horizon", "10m")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: --trace: no such file or folder") and "missing.csv" in res.stderr
