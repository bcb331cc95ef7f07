"""Rate profiles (SpotServe's per-minute arrival-rates.csv): reading, telling them from other CSVs, synthesis,
and their place in workload YAML, `trace inspect` and `forecast`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.errors import InputError
from forecasters.sources import load_source
from tests.factories import SHARED_TRACES
from tests.workloads.helpers import invoke, need, write
from workloads.availability import is_availability_trace
from workloads.formats import detect_format
from workloads.lengths import LognormalLengths
from workloads.rates import is_rate_profile, read_rate_profile, synthesize_profile
from workloads.spec import load_workload

SPOTSERVE_RATES = SHARED_TRACES / "spotserve_aws_g4dn" / "arrival-rates.csv"
LENGTHS = LognormalLengths(100, 0.5, 50, 0.5)


def _spec(tmp_path: Path, trace: dict[str, object]) -> Path:
    doc = {"apiVersion": "fleetwise/v1", "kind": "Workload", "metadata": {"name": "t"},
           "spec": {"source": {"trace": trace}}}
    return write(tmp_path / "w.yaml", yaml.safe_dump(doc))


def test_one_row_and_one_per_line_read_the_same(tmp_path: Path) -> None:
    row = read_rate_profile(write(tmp_path / "row.csv", "0.5,1.25,0,2\n"))
    col = read_rate_profile(write(tmp_path / "col.csv", "0.5\n1.25\n\n0\n2\n"), interval_s=30)
    np.testing.assert_array_equal(row.rates_per_s, [0.5, 1.25, 0, 2])
    np.testing.assert_array_equal(col.rates_per_s, row.rates_per_s)
    assert (row.interval_s, row.duration_s, row.expected_requests) == (60.0, 240.0, 225.0)
    assert (col.interval_s, col.expected_requests) == (30.0, 112.5)
    np.testing.assert_array_equal(row.counts(120.0), [105.0, 120.0])


def test_profiles_are_told_from_other_csvs(tmp_path: Path) -> None:
    profile = write(tmp_path / "r.csv", "0.5,0.6,0.7\n")
    node_counts = write(tmp_path / "n.csv", "0,3\n60000,4\n")  # Parcae t_ms,count: availability, not rates
    azure = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n")
    assert is_rate_profile(profile) and detect_format(profile) == "rates" and not is_availability_trace(profile)
    assert not is_rate_profile(node_counts) and is_availability_trace(node_counts)
    assert not is_rate_profile(azure) and detect_format(azure) == "azure"
    assert not is_rate_profile(write(tmp_path / "r.txt", "0.5,0.6,0.7\n"))


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("0.5,-1,2\n", "r.csv:1, value 2", "'-1' is not allowed; a rate in requests/s (a finite number ≥ 0)"),
        ("0.5,nan,2\n", "r.csv:1, value 2", "finite number ≥ 0"),
        ("1\n2\nx\n", "r.csv:3", "'x' is not allowed; a rate in requests/s"),
        ("1\n2\n3,4\n", "r.csv:3", "several values on a line"),
        ("\n\n", "r.csv", "no rates"),
    ],
)
def test_bad_profiles_name_the_line(tmp_path: Path, text: str, where: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_rate_profile(write(tmp_path / "r.csv", text))
    assert info.value.where == where


def test_bad_interval_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "1,2,3\n")
    with pytest.raises(InputError, match="interval_s: 0 is not allowed"):
        read_rate_profile(path, interval_s=0)
    with pytest.raises(InputError, match=r"whole number of the rate profile's intervals \(60 s"):
        read_rate_profile(path).counts(90.0)
    with pytest.raises(InputError, match="holds less than one interval"):
        read_rate_profile(path).counts(600.0)


def test_synthesis_follows_each_interval_rate(tmp_path: Path) -> None:
    profile = read_rate_profile(write(tmp_path / "r.csv", "20,0,5,40\n"), interval_s=30)
    table = synthesize_profile(profile, lengths=LENGTHS, seed=3)
    per_interval = np.bincount((table.arrival_s // 30).astype(int), minlength=4)
    assert per_interval[1] == 0  # an interval at rate 0 gets nothing
    for got, rate in zip(per_interval[[0, 2, 3]], (20, 5, 40), strict=True):
        assert abs(got - 30 * rate) < 4 * np.sqrt(30 * rate)  # Poisson: within four standard deviations
    assert table.model_names == ("r",) and table.arrival_s.max() < 120
    again = synthesize_profile(profile, lengths=LENGTHS, seed=3)
    np.testing.assert_array_equal(again.arrival_s, table.arrival_s)


def test_bursty_cv_spreads_the_counts(tmp_path: Path) -> None:
    profile = read_rate_profile(write(tmp_path / "r.csv", ",".join(["10"] * 200) + "\n"), interval_s=10)
    counts = {cv: np.bincount((synthesize_profile(profile, lengths=LENGTHS, seed=1, cv=cv).arrival_s // 10)
                              .astype(int), minlength=200) for cv in (1.0, 4.0)}
    assert counts[1.0].var() / counts[1.0].mean() == pytest.approx(1.0, abs=0.35)  # Poisson: variance = mean
    assert counts[4.0].var() / counts[4.0].mean() > 4  # a bursty renewal process is overdispersed
    with pytest.raises(InputError, match="cv: 0 is not allowed"):
        synthesize_profile(profile, lengths=LENGTHS, seed=1, cv=0)


def test_workload_yaml_sets_interval_cv_model_and_lengths(tmp_path: Path) -> None:
    write(tmp_path / "rates.csv", "2\n4\n")
    table = load_workload(_spec(tmp_path, {"path": "rates.csv", "interval_s": 300, "cv": 2, "model": "chat",
                                           "lengths": {"prompt": {"median_tokens": 64}, "output":
                                                       {"median_tokens": 32}}}), seed=5)
    assert table.model_names == ("chat",) and 300 < table.arrival_s.max() < 600
    assert 1200 < len(table) < 2400 and np.median(table.output_tokens) < 100
    bare = load_workload(tmp_path / "rates.csv", seed=5)
    assert bare.model_names == ("rates",) and bare.arrival_s.max() < 120


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ({"path": "rates.csv", "interval_s": -60}, "interval_s"),
        ({"path": "log.csv", "interval_s": 60},
         r"spec\.source\.trace\.interval_s: 60\.0 is not allowed; only for a rates source \(this trace is canonical\)"),
        ({"path": "log.csv", "cv": 2}, "only for a rates source"),
        ({"path": "rates.csv", "per_client": False}, "only for a servegen source"),
    ],
)
def test_fields_of_another_format_are_refused(tmp_path: Path, trace: dict[str, object], message: str) -> None:
    write(tmp_path / "rates.csv", "2,4,6\n")
    write(tmp_path / "log.csv", "arrival_s,model,slo_class,prompt_tokens,output_tokens\n0,m,c,5,6\n")
    with pytest.raises(InputError, match=message):
        load_workload(_spec(tmp_path, trace))


def test_forecast_source_counts_expected_requests(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", ",".join(str(1 + i % 3) for i in range(30)) + "\n")
    src = load_source(path, interval_s=180.0)
    assert src.kind == "rates" and src.name == "r"
    np.testing.assert_array_equal(src.target(), np.full(10, 360.0))


def test_inspect_summarises_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "r.csv", "1,1,0,2\n")
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(path), "--json", "--plot", str(tmp_path / "r.png"))
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["intervals"], data["expected_requests"], data["idle_intervals"]) == (4, 240.0, 1)
    assert (data["peak_to_mean"], data["largest_step"]) == (2.0, 2.0)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(path))
    assert "r (rate profile): 4 intervals of 60 s" in res.stdout


def test_spotserve_profile_end_to_end() -> None:
    profile = read_rate_profile(need(SPOTSERVE_RATES))
    assert len(profile.rates_per_s) == 19 and profile.rates_per_s.mean() == pytest.approx(0.5977, abs=1e-3)
    table = load_workload(SPOTSERVE_RATES)
    assert abs(len(table) - profile.expected_requests) < 4 * np.sqrt(profile.expected_requests)
