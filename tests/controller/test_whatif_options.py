"""What-if options: policies, sweeps and the workload a run replays."""

from __future__ import annotations

import numpy as np
import pytest

from controller.whatif.options import WhatIfConfig, parse_policies, parse_sweep
from controller.whatif.policies import POLICIES, mean_rate_scenarios
from controller.whatif.workload import prepare_workload
from core.errors import InputError
from tests.factories import make_fleet, make_table
from workloads.canonical import write_canonical


def test_sweep_includes_both_ends() -> None:
    sweep = parse_sweep("rate=0.6:1.6:0.2")
    assert sweep.parameter == "rate"
    assert sweep.values == (0.6, 0.8, 1.0, 1.2, 1.4, 1.6)


@pytest.mark.parametrize("text", ["rate=1.6:0.6:0.2", "rate=0:1:0.5", "gpus=1:2:1", "rate=1:2", "rate=a:b:c",
                                  "rate=0.1:100:0.1"])
def test_bad_sweeps_name_the_option(text: str) -> None:
    with pytest.raises(InputError, match="--sweep"):
        parse_sweep(text)


def test_policies_must_be_registered_and_unique() -> None:
    known = list(POLICIES)
    assert parse_policies("qlm, prism", known) == ("qlm", "prism")
    with pytest.raises(InputError, match="one of dedicated, muxserve, qlm, prism"):
        parse_policies("qlm,vllm", known)
    with pytest.raises(InputError, match="each policy once"):
        parse_policies("qlm,qlm", known)


def _config(tmp_path, **kw) -> WhatIfConfig:
    path = tmp_path / "trace.csv"
    write_canonical(make_table(400, models=("src",), rate_per_s=4.0, seed=3), path)
    return WhatIfConfig(fleet="unused.yaml", workload=str(path), policies=("dedicated",), **kw)


def _fleet():
    return make_fleet(models=[{"name": n, "arch": "Llama-3.2-1B", "tp_options": [1], "max_context_tokens": 4096}
                              for n in ("a", "b", "c")], slo_classes=[
        {"name": "interactive", "ttft_s": 1.0, "tpot_s": 0.1}, {"name": "batch", "online": False, "priority": 9}])


def test_workload_is_sliced_scaled_and_split_over_the_fleet(tmp_path) -> None:
    fleet = _fleet()
    base = prepare_workload(_config(tmp_path, split_models=2), fleet)
    assert set(base.model_names) == {"a", "b"} and set(base.slo_names) == {"interactive", "batch"}
    counts = np.bincount(base.model_idx)
    assert counts[0] > counts[1], "the first model is the most popular (Zipf)"
    doubled = prepare_workload(_config(tmp_path, split_models=2, rate_scale=2.0), fleet)
    assert len(doubled) == 2 * len(base)
    sliced = prepare_workload(_config(tmp_path, split_models=2, start_s=20, duration_s=30), fleet)
    assert sliced.arrival_s.min() >= 0 and sliced.arrival_s.max() < 30 and 0 < len(sliced) < len(base)


@pytest.mark.parametrize(("kw", "option"), [
    ({"split_models": 9}, "--split-models"), ({"zipf_exponent": 1.2}, "--zipf"), ({"start_s": 1e6}, "--start"),
])
def test_bad_workload_options_are_input_errors(tmp_path, kw: dict, option: str) -> None:
    with pytest.raises(InputError, match=option):
        prepare_workload(_config(tmp_path, **kw), _fleet())


def test_a_workload_with_classes_the_fleet_lacks_suggests_split_models(tmp_path) -> None:
    path = tmp_path / "w.yaml"  # a workload that names its own classes: a plain trace's are mapped onto the fleet
    path.write_text("""apiVersion: fleetwise/v1
kind: Workload
metadata: {name: gold}
spec:
  source: {synthetic: {duration_s: 60, models: [{model: a, rate_per_s: 2.0}]}}
  slo: {mix: {gold: 1.0}}
""")
    config = WhatIfConfig(fleet="unused.yaml", workload=str(path), policies=("dedicated",))
    with pytest.raises(InputError, match=r"slo_class: 'gold' is not the fleet's; .*\(interactive, batch\); or "
                                         r"--split-models N"):
        prepare_workload(config, _fleet())
    split = prepare_workload(config.model_copy(update={"split_models": 1}), _fleet())
    assert set(split.slo_names) <= {"interactive", "batch"} and len(split) > 0


def test_an_availability_trace_as_the_workload_says_where_it_belongs(tmp_path) -> None:
    path = tmp_path / "spot.csv"
    path.write_text("0,add,n1\n60000,remove,n1\n")
    config = WhatIfConfig(fleet="unused.yaml", workload=str(path), policies=("dedicated",))
    with pytest.raises(InputError, match="--workload: spot.csv is a spot availability trace, not requests; .*availability_trace"):
        prepare_workload(config, _fleet())


def test_a_slice_without_requests_names_the_range_they_arrive_in(tmp_path) -> None:
    path = tmp_path / "epoch.csv"
    table = make_table(50, models=("a",), rate_per_s=5.0, seed=1)
    write_canonical(table.with_arrivals(table.arrival_s + 1.7e9), path)  # Unix times, kept as written
    config = WhatIfConfig(fleet="unused.yaml", workload=str(path), policies=("dedicated",), start_s=60,
                          duration_s=600)
    with pytest.raises(InputError, match=r"--start: \[60, 660\) s holds no request; .* from 1700000000 to"):
        prepare_workload(config, _fleet())


def test_mean_rate_scenarios_hold_each_models_rate_lengths_and_classes(tmp_path) -> None:
    fleet = _fleet()
    table = prepare_workload(_config(tmp_path, split_models=2), fleet)
    sc = mean_rate_scenarios(table, fleet)
    rates = sc.expected_demand_rps()[:, 0]
    assert rates[2] == 0 and np.isclose(rates.sum(), len(table) / table.duration_s)
    assert np.allclose(sc.class_share[:2].sum(axis=1), 1.0)
    assert sc.mean_prompt_tokens[0] == 512 and sc.mean_output_tokens[1] == 128
