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
