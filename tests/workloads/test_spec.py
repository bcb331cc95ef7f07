"""Workload YAML and `load_workload`: the bundled examples, mapping onto fleets, and errors with YAML paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from core.errors import InputError
from core.fleet import load_fleet
from tests.factories import EXAMPLES, make_fleet
from tests.workloads.helpers import AZURE_CONV, M_LARGE, need, write, write_servegen
from workloads.spec import load_workload

WORKLOADS = EXAMPLES / "workloads"
SMALL = EXAMPLES / "small-hetero.yaml"


def _spec(tmp_path: Path, body: dict[str, Any], name: str = "w.yaml") -> Path:
    doc = {"apiVersion": "fleetwise/v1", "kind": "Workload", "metadata": {"name": "t"}, "spec": body}
    return write(tmp_path / name, yaml.safe_dump(doc, sort_keys=False))


def test_chat_mix_is_self_contained_and_fits_the_small_fleet() -> None:
    fleet = load_fleet(SMALL)
    table = load_workload(WORKLOADS / "chat-mix.yaml")
    assert set(table.model_names) == set(fleet.model_names)
    assert table.slo_names == tuple(c.name for c in fleet.slo_classes)
    assert 600 <= table.duration_s <= 1200 and 15 < len(table) / table.duration_s < 35
    same = load_workload(WORKLOADS / "chat-mix.yaml", fleet=fleet, seed=123)  # the YAML's seed wins
    assert np.array_equal(same.arrival_s, table.arrival_s) and same.model_names == tuple(fleet.model_names)


def test_azure_example_splits_over_the_small_fleet() -> None:
    need(AZURE_CONV)
    fleet = load_fleet(SMALL)
    table = load_workload(WORKLOADS / "azure-conv-small.yaml")
    assert len(table) == 19_366 and table.model_names == tuple(fleet.model_names)
    counts = np.bincount(table.model_idx, minlength=len(fleet.model_names))
    assert np.all(np.diff(counts) < 0)  # Zipf: each model less popular than the one before
    assert table.slo_names == ("interactive", "standard", "batch")
    assert np.bincount(table.slo_idx)[0] / len(table) == pytest.approx(0.5, abs=0.02)


def test_servegen_example_uses_the_long_tail_fleet_names() -> None:
    need(M_LARGE)
    fleet = load_fleet(EXAMPLES / "longtail-h100.yaml")
    table = load_workload(WORKLOADS / "servegen-longtail.yaml")
    assert table.model_names == tuple(fleet.model_names) and table.slo_names == ("interactive", "standard")
    assert table.duration_s == pytest.approx(3600, abs=1) and 1.0e6 < len(table) < 1.4e6


def test_trace_file_onto_fleet_splits_by_fleet_shares(tmp_path: Path) -> None:
    rows = "".join(f"2023-11-16 18:{i // 600:02d}:{i % 600 / 10:04.1f},10,5\n" for i in range(3000))
    trace = write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    fleet = load_fleet(SMALL)
    table = load_workload(trace, fleet=fleet, seed=2)
    assert table.model_names == tuple(fleet.model_names) and table.slo_names == ("interactive", "standard", "batch")
    assert load_workload(trace).model_names == ("azure",)


def test_multi_model_source_maps_whole_streams_by_rank(tmp_path: Path) -> None:
    folder = write_servegen(tmp_path / "sg", {
        0: ["0,0.5,1,Gamma,1,2", "600,0.5,1,Gamma,1,2"], 1: ["0,3,1,Gamma,1,0.33", "600,3,1,Gamma,1,0.33"],
    })
    fleet = make_fleet(models=[{"name": "big", "arch": "Llama-3.2-1B"}, {"name": "small", "arch": "Llama-3.2-1B"}],
                       workload={"mix": [{"model": "big", "share": 0.9}, {"model": "small", "share": 0.1}]})
    table = load_workload(folder, fleet=fleet, seed=1)
    assert table.model_names == ("big", "small")
    counts = np.bincount(table.model_idx, minlength=2)
    assert counts[0] > 4 * counts[1]  # client 1 (3 req/s) → big, client 0 (0.5 req/s) → small


def test_synthetic_total_rate_over_fleet_and_transforms(tmp_path: Path) -> None:
    path = _spec(tmp_path, {
        "fleet": str(SMALL), "seed": 3,
        "source": {"synthetic": {"duration_s": 600, "total_rate_per_s": 10, "cv": 1.5,
                                 "lengths": {"prompt": {"median_tokens": 100, "sigma": 0.5, "max_tokens": 400},
                                             "output": {"median_tokens": 20, "sigma": 0.5, "max_tokens": 50}}}},
        "slice": {"start_s": 100, "end_s": 400}, "rate_scale": 2.0,
    })
    table = load_workload(path)
    assert len(table) == pytest.approx(10 * 300 * 2, rel=0.15) and table.arrival_s.max() < 300
    assert table.prompt_tokens.max() <= 400 and table.output_tokens.max() <= 50
    assert table.model_names == tuple(load_fleet(SMALL).model_names)


def test_model_map_modes(tmp_path: Path) -> None:
    base = {"source": {"synthetic": {"duration_s": 200, "models": [{"model": "a", "rate_per_s": 5},
                                                                    {"model": "b", "rate_per_s": 1}]}}}
    split = load_workload(_spec(tmp_path, base | {"models": {"mode": "split", "to": ["x", "y", "z"],
                                                             "zipf_exponent": 0}}))
    assert split.model_names == ("x", "y", "z")
    ranked = load_workload(_spec(tmp_path, base | {"models": {"mode": "rank", "to": ["p", "q"]}}))
    assert np.bincount(ranked.model_idx)[0] > np.bincount(ranked.model_idx)[1]
    renamed = load_workload(_spec(tmp_path, base | {"models": {"mode": "rename", "rename": {"b": "a"}}}))
    assert renamed.model_names == ("a",)
    with pytest.raises(InputError, match="target model names"):
        load_workload(_spec(tmp_path, base | {"models": {"mode": "split"}}))


def test_trace_relative_paths_and_lengths_trace(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "t.csv", "arrival_s,model,slo_class,prompt_tokens,output_tokens\n"
          "0,m,gold,5,6\n1,m,gold,7,8\n")
    sg = write_servegen(tmp_path / "data" / "sg", {3: ["0,2,1,Gamma,1,0.5"]})
    spec = _spec(tmp_path, {"source": {"trace": {"path": "data/sg", "lengths": {"trace": "data/t.csv"}}}})
    table = load_workload(spec, seed=1)
    assert table.model_names == ("sg-c003",) and set(zip(table.prompt_tokens, table.output_tokens)) <= {(5, 6), (7, 8)}
    assert sg.is_dir()


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1}}, "colour": 1}, "spec.colour"),
        ({"source": {}}, "exactly one of 'trace' or 'synthetic'"),
        ({"source": {"synthetic": {"duration_s": 10}}}, "either 'models'"),
        ({"source": {"synthetic": {"duration_s": -1, "total_rate_per_s": 1}}}, "spec.source.synthetic.duration_s"),
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1}}, "slice": {"start_s": 5, "end_s": 2}},
         "spec.slice.end_s"),
        ({"source": {"trace": {"path": "missing.csv"}}}, "no such file"),
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1}}, "slo": {}}, "spec.slo"),
        ({"source": {"synthetic": {"duration_s": float("inf"), "total_rate_per_s": 1}}}, "finite number"),
        ({"source": {"synthetic": {"duration_s": 1e12, "total_rate_per_s": 1}}}, "duration_s: 1000000000000.0 is not allowed; must be ≤ 31622400"),
        ({"source": {"synthetic": {"duration_s": 900, "total_rate_per_s": 1e12}}}, "requests in all on this machine"),
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1, "cv": float("inf")}}}, "synthetic.cv"),
        ({"source": {"synthetic": {"duration_s": 10, "models": [{"model": "a", "rate_per_s": 5},
                                                               {"model": "a", "rate_per_s": 1}]}}},
         "each model once"),
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1, "lengths": {
            "prompt": {"median_tokens": 9, "max_tokens": 10**14}, "output": {"median_tokens": 9}}}}},
         "prompt.max_tokens: 100000000000000 is not allowed; must be ≤ 2147483647"),
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1}}, "seed": -1}, "spec.seed: -1 is not allowed; must be ≥ 0"),
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1}},
          "models": {"mode": "split", "to": ["a", "a"]}}, "'a' appears twice"),
        ({"source": {"synthetic": {"duration_s": 10, "total_rate_per_s": 1}}, "slo": {"mix": {"": 1.0}}},
         "at least 1 character"),
    ],
)
def test_bad_workload_yaml(tmp_path: Path, body: dict[str, Any], text: str) -> None:
    with pytest.raises(InputError, match=text.replace(".", r"\.").replace("(", r"\(")) as info:
        load_workload(_spec(tmp_path, body))
    assert "\n" not in str(info.value)


def test_yaml_errors_carry_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "w.yaml", "apiVersion: fleetwise/v1\nkind: Workload\nmetadata: {name: t}\nspec:\n"
                 "  source:\n    synthetic: {duration_s: 10, total_rate_per_s: 1, burst: 3}\n")
    with pytest.raises(InputError, match=r"w\.yaml:6.*burst"):
        load_workload(path)


def test_fleet_mismatch_is_reported(tmp_path: Path) -> None:
    path = _spec(tmp_path, {"source": {"synthetic": {"duration_s": 10, "models": [{"model": "a", "rate_per_s": 1}]}},
                            "models": {"mode": "rename", "rename": {"a": "ghost"}}})
    with pytest.raises(InputError, match="model: 'ghost' is not the fleet's; a model of fleet 'test' \\(chat\\)"):
        load_workload(path, fleet=make_fleet())
