"""`fleetwise whatif` end to end through the real CLI: a seeded golden run, sweeps and plots, parallel runs, and
bad options (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli import run_cli
from tests.factories import fleet_dict, make_table, write_fleet
from workloads.canonical import write_canonical

MODELS = [{"name": n, "arch": "Llama-3.2-1B", "tp_options": [1], "max_context_tokens": 4096} for n in "abc"]
CLASSES = [{"name": "interactive", "ttft_s": 0.5, "tpot_s": 0.05, "priority": 0},
           {"name": "standard", "ttft_s": 2.0, "tpot_s": 0.1, "priority": 1}]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-GPU fleet of three 1B models and 60 s of seeded traffic on one source model (split by the CLI)."""
    d = tmp_path_factory.mktemp("whatif")
    spec = fleet_dict(pools=[{"name": "l4", "gpu": "L4", "count": 2, "gpus_per_node": 1}], models=MODELS,
                      slo_classes=CLASSES, workload={"default_slo_mix": {"interactive": 0.6, "standard": 0.4}})
    fleet = write_fleet(d / "fleet.yaml", spec)
    table = make_table(240, models=("src",), rate_per_s=4.0, seed=7)
    rng = np.random.default_rng(7)
    table = table.__class__.from_columns(
        arrival_s=table.arrival_s, model_idx=table.model_idx, slo_idx=table.slo_idx,
        prompt_tokens=rng.integers(64, 1024, len(table)), output_tokens=rng.integers(8, 256, len(table)),
        model_names=table.model_names, slo_names=table.slo_names)
    trace = d / "trace.csv"
    write_canonical(table, trace)
    return fleet, trace


def _run(inputs: tuple[Path, Path], out: Path, *extra: str) -> tuple[dict, str]:
    fleet, trace = inputs
    res = run_cli("whatif", "--fleet", str(fleet), "--workload", str(trace), "--split-models", "3",
                  "--report-json", str(out), *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text()), res.stdout


@pytest.fixture(scope="module")
def golden(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """Every baseline, one process, seed 3, with a plot: the run the golden figures pin."""
    d = tmp_path_factory.mktemp("golden")
    report, stdout = _run(inputs, d / "r.json", "--jobs", "1", "--seed", "3", "--duration", "30",
                          "--plot", str(d / "r.png"))
    return report, stdout, d / "r.png"


def test_whatif_golden_run(golden: tuple[dict, str, Path]) -> None:
    report, _, _ = golden
    assert report["config"]["policies"] == ["dedicated", "muxserve", "qlm", "prism"]
    assert report["config"]["seed"] == 3 and report["config"]["split_models"] == 3
    figures = {p: _golden_view(f) for p, f in report["policies"].items()}
    assert figures == GOLDEN


def _golden_view(f: dict) -> dict:
    """The figures a golden run pins: attainment, latency percentiles, goodput, cost, requests, actions."""
    r6 = lambda x: None if x is None else round(x, 6)
    return {
        "slo_attainment": r6(f["slo_attainment"]), "ttft_attainment": r6(f["ttft_attainment"]),
        "tpot_attainment": r6(f["tpot_attainment"]),
        "per_class": {c: r6(v["slo_attainment"]) for c, v in f["per_class"].items()},
        "ttft_s": {k: r6(f["ttft_s"][k]) for k in ("p50", "p99")},
        "tpot_s": {k: r6(f["tpot_s"][k]) for k in ("p50", "p99")},
        "goodput_tokens_per_s": r6(f["goodput_tokens_per_s"]), "gpu_hours": r6(f["gpu_hours"]),
        "cost_usd": r6(f["cost_usd"]), "requests": f["requests"], "actions": f["actions"],
    }


# Three 1B models on two L4s, 30 s of traffic (seed 3). dedicated has a GPU for two models only: the third's
# requests wait at the router and are dropped after its timeout (the GPUs stay billed until then); muxserve and
# prism co-locate all three in memory and attain everything; qlm serves one model per instance and swaps the third
# in and out (a swap per group), so TTFTs suffer; a replica it swaps back in while it still drains is re-activated
# (which cancels the drain) rather than counted as serving.
GOLDEN: dict = {'dedicated': {'slo_attainment': 0.773913,
               'ttft_attainment': 0.773913,
               'tpot_attainment': 0.773913,
               'per_class': {'interactive': 0.822581, 'standard': 0.716981},
               'ttft_s': {'p50': 0.038798, 'p99': 0.075577},
               'tpot_s': {'p50': 0.011904, 'p99': 0.013404},
               'goodput_tokens_per_s': 373.077258,
               'gpu_hours': 0.083333,
               'cost_usd': 0.066667,
               'requests': {'total': 115, 'completed': 89, 'dropped': 26},
               'actions': {'activate_model': 2, 'set_queue_order': 2, 'set_routing': 2}},
 'muxserve': {'slo_attainment': 1.0,
              'ttft_attainment': 1.0,
              'tpot_attainment': 1.0,
              'per_class': {'interactive': 1.0, 'standard': 1.0},
              'ttft_s': {'p50': 0.042003, 'p99': 0.078426},
              'tpot_s': {'p50': 0.013072, 'p99': 0.025075},
              'goodput_tokens_per_s': 458.643337,
              'gpu_hours': 0.018916,
              'cost_usd': 0.015133,
              'requests': {'total': 115, 'completed': 115, 'dropped': 0},
              'actions': {'activate_model': 3, 'set_queue_order': 3, 'set_routing': 3}},
 'qlm': {'slo_attainment': 0.573913,
         'ttft_attainment': 0.573913,
         'tpot_attainment': 1.0,
         'per_class': {'interactive': 0.403226, 'standard': 0.773585},
         'ttft_s': {'p50': 0.867769, 'p99': 5.05364},
         'tpot_s': {'p50': 0.012839, 'p99': 0.023799},
         'goodput_tokens_per_s': 254.962437,
         'gpu_hours': 0.018873,
         'cost_usd': 0.015099,
         'requests': {'total': 115, 'completed': 115, 'dropped': 0},
         'actions': {'activate_model': 22, 'deactivate_model': 2, 'set_queue_order': 15, 'set_routing': 11}},
 'prism': {'slo_attainment': 1.0,
           'ttft_attainment': 1.0,
           'tpot_attainment': 1.0,
           'per_class': {'interactive': 1.0, 'standard': 1.0},
           'ttft_s': {'p50': 0.042003, 'p99': 0.078426},
           'tpot_s': {'p50': 0.013072, 'p99': 0.025075},
           'goodput_tokens_per_s': 458.643337,
           'gpu_hours': 0.018916,
           'cost_usd': 0.015133,
           'requests': {'total': 115, 'completed': 115, 'dropped': 0},
           'actions': {'activate_model': 3, 'set_queue_order': 3, 'set_routing': 3}}}


def test_tables_and_plot_of_a_comparison(golden: tuple[dict, str, Path]) -> None:
    _, stdout, png = golden
    assert "What-if comparison" in stdout and "SLO attainment" in stdout
    assert all(p in stdout for p in ("dedicated", "muxserve", "qlm", "prism"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_parallel_runs_match_a_single_process(inputs: tuple[Path, Path], golden: tuple[dict, str, Path],
                                              tmp_path: Path) -> None:
    two, _ = _run(inputs, tmp_path / "two.json", "--jobs", "2", "--seed", "3", "--duration", "30")
    strip = lambda rep: {p: {k: v for k, v in f.items() if "wall" not in k and k != "events"}
                         for p, f in rep["policies"].items()}
    assert strip(two) == strip(golden[0])


def test_sweep_writes_a_plot_and_every_point(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    png = tmp_path / "sweep.png"
    report, stdout = _run(inputs, tmp_path / "s.json", "--policy", "dedicated", "--duration", "10",
                          "--sweep", "rate=0.5:1.5:0.5", "--plot", str(png))
    sweep = report["sweep"]
    assert sweep["parameter"] == "rate" and [run["value"] for run in sweep["runs"]] == [0.5, 1.0, 1.5]
    totals = [run["policies"]["dedicated"]["requests"]["total"] for run in sweep["runs"]]
    assert totals[0] < totals[1] < totals[2]
    assert report["policies"] == sweep["runs"][1]["policies"], "the nominal point is the report's policies"
    assert "Load sweep" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "where"), [
    (["--policy", "dedicated,vllm"], "--policy"),
    (["--rate-scale", "fast"], "--rate-scale"),
    (["--split-models", "9"], "--split-models"),
    (["--rate-scale", "inf"], "--rate-scale: 'inf' is not allowed; a finite number > 0"),
    (["--split-models", "2", "--zipf", "inf"], "--zipf: 'inf' is not allowed; a finite number ≥ 0"),
    (["--rate-scale", "1e9"], "rate_scale: 1000000000.0 is not allowed; a factor that keeps the workload within"),
    (["--replan-interval", "1e-9"], "--replan-interval: '1e-9' is not allowed; a finite number ≥ 1"),  # hung
])
def test_bad_options_fail_with_one_line(inputs: tuple[Path, Path], args: list[str], where: str) -> None:
    fleet, trace = inputs
    res = run_cli("whatif", "--fleet", str(fleet), "--workload", str(trace), *args)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and where in lines[0], res.stderr


def test_missing_workload_is_one_line(inputs: tuple[Path, Path]) -> None:
    fleet, _ = inputs
    res = run_cli("whatif", "--fleet", str(fleet), "--workload", "nope.csv")
    assert res.returncode == 2 and "--workload" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_report_must_not_overwrite_an_input(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    fleet, _ = inputs
    mooncake = tmp_path / "trace.json"
    mooncake.write_text('{"timestamp": 0, "input_length": 5, "output_length": 5}\n')
    res = run_cli("whatif", "--fleet", str(fleet), "--workload", str(mooncake), "--report-json", str(mooncake))
    assert res.returncode == 2 and "--report-json" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert mooncake.read_text().startswith('{"timestamp": 0')


@pytest.fixture(scope="module")
def spot_fleet(inputs: tuple[Path, Path]) -> Path:
    """The three models on one on-demand L4 and two spot L4s whose trace takes one away at 10 s and one at 20 s."""
    folder = inputs[0].parent
    (folder / "spot.csv").write_text("0,add,n1\n0,add,n2\n10000,remove,n2\n20000,remove,n1\n40000,add,n3\n")
    spec = fleet_dict(pools=[{"name": "l4", "gpu": "L4", "count": 1, "gpus_per_node": 1},
                             {"name": "l4-spot", "gpu": "L4", "count": 2, "gpus_per_node": 1, "spot": True,
                              "price_per_hour": 0.3, "availability_trace": "spot.csv"}],
                      models=MODELS, slo_classes=CLASSES,
                      workload={"default_slo_mix": {"interactive": 0.6, "standard": 0.4}})
    return write_fleet(folder / "spot-fleet.yaml", spec)


def test_spot_pools_replay_their_trace(inputs: tuple[Path, Path], spot_fleet: Path, tmp_path: Path) -> None:
    trace = inputs[1]
    runs = {}
    for name, extra in {"replay": ["--policy", "dedicated,spotserve"], "no-spot": ["--no-spot"],
                        "later": ["--spot-start", "15"]}.items():
        res = run_cli("whatif", "--fleet", str(spot_fleet), "--workload", str(trace), "--split-models", "3",
                      "--duration", "45", "--policy", "dedicated", "--report-json", str(tmp_path / f"{name}.json"),
                      *extra)
        assert res.returncode == 0, res.stderr
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
        if name == "replay":
            assert "2 GPUs removed by the spot pools' availability traces" in " ".join(res.stdout.split())
    assert {p: f["gpus_removed"] for p, f in runs["replay"]["policies"].items()} == {"dedicated": 2, "spotserve": 2}
    assert runs["no-spot"]["policies"]["dedicated"]["gpus_removed"] == 0
    assert runs["later"]["policies"]["dedicated"]["gpus_removed"] == 1  # from 15 s on, only the removal at 20 s
    assert runs["replay"]["config"]["spot_start_s"] == 0 and runs["later"]["config"]["spot_start_s"] == 15


@pytest.mark.parametrize(("fleet_of", "args", "message"), [
    ("spot", ["--spot-start", "40"], ("--spot-start: 40.0 is not allowed; a trace time from 0 to before the end of "
                                     "pool l4-spot's trace spot (40 s)")),
    ("spot", ["--spot-start", "5", "--no-spot"], "only with a fleet whose spot pools name an availability_trace"),
    ("plain", ["--spot-start", "5"], "only with a fleet whose spot pools name an availability_trace"),
    ("spot", ["--spot-start", "-1"], "--spot-start: '-1' is not allowed; a finite number ≥ 0"),
])
def test_bad_spot_options_fail_with_one_line(inputs: tuple[Path, Path], spot_fleet: Path, fleet_of: str,
                                             args: list[str], message: str) -> None:
    fleet = spot_fleet if fleet_of == "spot" else inputs[0]
    res = run_cli("whatif", "--fleet", str(fleet), "--workload", str(inputs[1]), "--split-models", "3", *args)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr
