"""`fleetwise trace inspect | convert`: the acceptance runs as a subprocess (exactly as users run them), the rest
in-process through the same entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.factories import EXAMPLES
from tests.workloads.helpers import AZURE_CONV, M_LARGE, Result, invoke, need, write
from workloads.canonical import read_canonical

Cap = pytest.CaptureFixture[str]
Patch = pytest.MonkeyPatch
CHAT_MIX = EXAMPLES / "workloads" / "chat-mix.yaml"


def test_inspect_azure_conv_reports_requests_and_duration() -> None:
    res = run_cli("trace", "inspect", str(need(AZURE_CONV)))
    assert res.returncode == 0, res.stderr
    assert "19,366 requests over 58.4 minutes" in res.stdout
    assert "1020/2734/4142" in res.stdout  # prompt p50/p90/p99


def test_malformed_row_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n"
                 "2023-11-16 18:00:01,12,-5\n")
    res = run_cli("trace", "inspect", str(path))
    _one_line_error(Result(res.returncode, res.stdout, res.stderr), "bad.csv:3", "-5", "GeneratedTokens")


def test_inspect_chat_mix_json_and_plot(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    plot = tmp_path / "rate.png"
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(CHAT_MIX), "--json", "--plot", str(plot), "--top", "3")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["num_models"] == 8 and len(data["models"]) == 4 and data["models"][-1]["model"] == "others"
    assert data["requests"] == sum(row["requests"] for row in data["models"])
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_inspect_table_output(capsys: Cap, monkeypatch: Patch) -> None:
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(CHAT_MIX), "--top", "3")
    assert res.code == 0, res.stderr
    for text in ("Per model", "llama8b-0", "others (5)", "all (8)", "interactive"):
        assert text in res.stdout


def test_inspect_servegen_folder_summarises_rates(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    plot = tmp_path / "sg.png"
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(need(M_LARGE)), "--json", "--top", "5", "--plot",
                 str(plot))
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["clients"] == 162 and data["windows"] == 2016 and round(data["expected_requests"]) == 236_892_826
    assert len(data["top"]) == 5 and data["others"] is not None and plot.stat().st_size > 0


def test_convert_slices_scales_and_splits(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    dest = tmp_path / "out.csv"
    res = invoke(capsys, monkeypatch, "trace", "convert", str(need(AZURE_CONV)), str(dest), "--start-s", "600",
                 "--end-s", "1200", "--rate-scale", "2", "--split", "4", "--slo-class", "interactive", "--seed", "3")
    assert res.code == 0, res.stderr
    table = read_canonical(dest)
    assert set(table.model_names) == {"model-0", "model-1", "model-2", "model-3"}
    assert table.slo_names == ("interactive",)
    assert table.arrival_s.min() >= 0 and table.arrival_s.max() < 600
    assert 2 * 1900 < len(table) < 2 * 3300  # ~5.5 req/s over 10 minutes, doubled
    assert f"wrote {len(table):,} requests" in res.stdout


def test_convert_onto_a_fleet(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    dest = tmp_path / "out.csv"
    res = invoke(capsys, monkeypatch, "trace", "convert", str(CHAT_MIX), str(dest),
                 "--fleet", str(EXAMPLES / "small-hetero.yaml"))
    assert res.code == 0, res.stderr
    assert len(read_canonical(dest).model_names) == 8


def test_unsorted_trace_warns_on_stderr(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    path = write(tmp_path / "u.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:05,1,1\n"
                 "2023-11-16 18:00:01,1,1\n")
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(path), "--json")
    assert res.code == 0 and "1 of 2 rows" in res.stderr and json.loads(res.stdout)["requests"] == 2


def _one_line_error(res: Result, *needles: str) -> None:
    assert res.code == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--rate-scale", "0"], ["--rate-scale"]),
        (["--start-s", "9", "--end-s", "3"], ["--end-s"]),
        (["--split", "2", "--split-models", "a,b"], ["--split"]),
        (["--rate-scale", "nan"], ["--rate-scale", "nan", "finite"]),
        (["--rate-scale", "inf"], ["--rate-scale", "inf", "finite"]),
        (["--rate-scale", "1e9"], ["rate_scale", "requests on this machine"]),
        (["--start-s", "nan"], ["--start-s", "nan", "finite"]),
        (["--split", "3", "--zipf", "6"], ["--zipf", "6.0", "≤ 5"]),
        (["--split", "100000"], ["--split", "100000", "10,000"]),
        (["--split-models", "a,a"], ["--split-models", "'a' appears twice"]),
        (["--slo-class", ""], ["--slo-class", "''", "at least 1 character"]),
        (["--model", ""], ["--model", "''", "at least 1 character"]),
        (["--start-s", "1e9"], ["source", "no requests"]),
    ],
)
def test_bad_convert_options_exit_2(tmp_path: Path, capsys: Cap, monkeypatch: Patch, args: list[str],
                                    needles: list[str]) -> None:
    src = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n")
    _one_line_error(invoke(capsys, monkeypatch, "trace", "convert", str(src), str(tmp_path / "o.csv"), *args), *needles)


def test_yaml_with_transform_options_and_missing_files_exit_2(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    res = invoke(capsys, monkeypatch, "trace", "convert", str(CHAT_MIX), str(tmp_path / "o.csv"), "--split", "3")
    _one_line_error(res, "--split", "workload YAML")
    _one_line_error(invoke(capsys, monkeypatch, "trace", "inspect", str(tmp_path / "missing.csv")), "missing.csv")


def test_convert_refuses_to_overwrite_its_inputs(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    trace = write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n")
    fleet = write(tmp_path / "f.yaml", (EXAMPLES / "small-hetero.yaml").read_text())
    spec = write(tmp_path / "w.yaml", "apiVersion: fleetwise/v1\nkind: Workload\nmetadata: {name: w}\n"
                 "spec:\n  fleet: f.yaml\n  source: {trace: {path: t.csv}}\n")
    before = {p: p.read_text() for p in (trace, fleet, spec)}
    for source, dest, extra in [(trace, trace, []), (trace, tmp_path / "." / "t.csv", []),
                                (trace, fleet, ["--fleet", str(fleet)]), (spec, spec, []), (spec, trace, []),
                                (spec, fleet, [])]:
        res = invoke(capsys, monkeypatch, "trace", "convert", str(source), str(dest), *extra)
        _one_line_error(res, "dest", f"{dest} is also read", "other than the command's inputs")
    assert {p: p.read_text() for p in (trace, fleet, spec)} == before


def test_convert_checks_the_destination_before_reading(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    src = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n")
    res = invoke(capsys, monkeypatch, "trace", "convert", str(src), str(tmp_path / "no" / "o.csv"))
    _one_line_error(res, "dest", "existing folder")
    _one_line_error(invoke(capsys, monkeypatch, "trace", "convert", str(src), str(tmp_path)), "dest", "is a folder")


def test_negative_seed_is_a_usage_error(tmp_path: Path) -> None:
    src = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n")
    res = run_cli("trace", "convert", str(src), str(tmp_path / "o.csv"), "--split", "2", "--seed", "-1")
    assert res.returncode == 2 and "--seed" in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("plot", ["rate.txt", "."])
def test_inspect_plot_must_be_a_png_path(tmp_path: Path, capsys: Cap, monkeypatch: Patch, plot: str) -> None:
    src = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n")
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(src), "--plot", str(tmp_path / plot))
    _one_line_error(res, "--plot", ".png")
    assert not (tmp_path / f"{plot}.png").exists()


def test_inspect_an_availability_trace(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    path = write(tmp_path / "spot.csv", "0,add,n1\n0,add,n2\n0,add,n3\n600000,remove,n2\n1200000,add,n4\n")
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(path), "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["events"], data["removals"], data["additions"], data["max_count"]) == (5, 1, 4, 3)
    res = invoke(capsys, monkeypatch, "trace", "inspect", str(path))
    assert "spot (availability trace): 5 events" in res.stdout and "removals per hour" in res.stdout


def test_a_folder_of_traces_names_one_to_pass(tmp_path: Path, capsys: Cap, monkeypatch: Patch) -> None:
    (tmp_path / "zone").mkdir()
    write(tmp_path / "zone" / "b.json", '{"metadata": {"gap_seconds": 300}, "data": [1, 1]}')
    for args in (("trace", "inspect", str(tmp_path)), ("forecast", "--trace", str(tmp_path))):
        res = invoke(capsys, monkeypatch, *args)
        _one_line_error(res, "holds 1 trace files: pass one, e.g.", "b.json", "or an availability trace")
