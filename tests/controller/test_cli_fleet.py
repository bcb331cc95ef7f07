import json
from pathlib import Path

from tests.cli import run_cli
from tests.factories import EXAMPLES, fleet_dict, write_fleet


def test_help_lists_commands() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    assert "fleet" in res.stdout


def test_fleet_check_summarises_pools_models_and_fit() -> None:
    res = run_cli("fleet", "check", str(EXAMPLES / "small-hetero.yaml"))
    assert res.returncode == 0, res.stderr
    for text in ("GPU pools", "Models", "Fit", "H100-SXM", "qwen-14b", "✗"):
        assert text in res.stdout


def test_fleet_check_json() -> None:
    res = run_cli("fleet", "check", "--json", str(EXAMPLES / "longtail-h100.yaml"))
    data = json.loads(res.stdout)
    assert data["num_gpus"] == 192 and len(data["models"]) == 162
    assert all(row["fits"] for row in data["fit"])


def test_bad_fleet_exits_2_with_one_line(tmp_path: Path) -> None:
    data = fleet_dict()
    data["spec"]["pools"][0]["count"] = -4
    res = run_cli("fleet", "check", str(write_fleet(tmp_path / "bad.yaml", data)))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "spec.pools[0].count" in lines[0] and "-4" in lines[0]
    assert "Traceback" not in res.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    res = run_cli("fleet", "check", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "nope.yaml" in res.stderr and "Traceback" not in res.stderr


def test_binary_file_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_bytes(b"\xff\xfe\x00\x01")
    res = run_cli("fleet", "check", str(tmp_path / "fleet.yaml"))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "fleet.yaml" in lines[0] and "UTF-8" in lines[0], res.stderr


def test_fleet_check_refuses_labels_the_controller_would_refuse(tmp_path: Path) -> None:
    data = fleet_dict()
    data["metadata"]["labels"] = {"fleetwise/advisroy": "true"}
    res = run_cli("fleet", "check", str(write_fleet(tmp_path / "typo.yaml", data)))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "fleetwise/advisroy" in lines[0], res.stderr


def _spot_fleet(tmp_path: Path, trace: str) -> Path:
    (tmp_path / "spot.csv").write_text(trace)
    data = fleet_dict(pools=[{"name": "spot", "gpu": "L4", "count": 2, "gpus_per_node": 1, "spot": True,
                              "price_per_hour": 0.3, "availability_trace": "spot.csv"}])
    return write_fleet(tmp_path / "fleet.yaml", data)


def test_fleet_check_summarises_spot_traces_and_says_when_the_pool_caps_one(tmp_path: Path) -> None:
    path = _spot_fleet(tmp_path, "0,add,a\n0,add,b\n0,add,c\n1800000,remove,b\n3600000,remove,a\n")
    res = run_cli("fleet", "check", str(path))
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "Spot availability traces" in text and "spot: the trace reaches 3 instances, the pool has 2 (capped)" in text
    data = json.loads(run_cli("fleet", "check", "--json", str(path)).stdout)
    assert data["availability_traces"]["spot"]["removals"] == 2 and data["availability_traces"]["spot"]["max_count"] == 3


def test_an_unreadable_spot_trace_fails_the_check_naming_the_pool_and_line(tmp_path: Path) -> None:
    res = run_cli("fleet", "check", str(_spot_fleet(tmp_path, "0,add,a\n5000,explode,a\n")))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1
    assert "pool spot: availability_trace: spot.csv:2: '5000,explode,a' is not allowed; t_ms,add|remove" in lines[0]
    (tmp_path / "spot.csv").unlink()
    res = run_cli("fleet", "check", str(tmp_path / "fleet.yaml"))
    assert res.returncode == 2 and f"{tmp_path / 'spot.csv'}: no such file" in res.stderr
