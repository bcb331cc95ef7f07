"""Activation on demand between placements, and the KV fill after packing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from optimizers.on_demand import activate_on_demand
from optimizers.placement.packing import KV_FILL_RESERVE, fill_kv, pack, replica_items
from optimizers.placement.problem import build_problem
from tests.factories import make_fleet
from tests.optimizers.conftest import scenario_set

FLEET = make_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}],
                   models=[{"name": f"m{i}", "arch": "Llama-3.2-3B", "tp_options": [1], "max_context_tokens": 8192}
                           for i in range(3)])
GPUS = {"h100": ["h100/0", "h100/1"]}


@pytest.fixture(scope="module")
def problem():
    return build_problem(FLEET, scenario_set(FLEET, [[2.0, 0.5, 0.0]]))


def _packed(problem, counts, kv):
    items = replica_items(problem, counts, kv, None, {})
    return list(pack(problem, items, GPUS, packer="ffd").replicas)


def test_fill_gives_the_gpu_memory_left_to_its_replicas_and_returns_what_packing_cut_first(problem) -> None:
    a, b = (c.index for c in problem.configs[:2])
    counts = [0] * len(problem.configs)
    counts[a] = counts[b] = 1
    kv = [0.0] * len(problem.configs)
    kv[a], kv[b] = 4.0, 4.0
    placed = _packed(problem, counts, kv)
    on_one = [replace(r, gpu_ids=("h100/0",), replica_id=f"{r.model}@h100/0") for r in placed]
    cut = [replace(on_one[0], kv_share_gib=2.0, memory_gib=on_one[0].memory_gib - 2.0, wanted_kv_gib=30.0),
           on_one[1]]
    filled = fill_kv(problem, cut)
    usable = problem.pools[0].usable_gib
    assert sum(r.memory_gib for r in filled) == pytest.approx(usable * (1 - KV_FILL_RESERVE))
    assert filled[0].kv_share_gib >= 30.0 - 1e-9  # its deficit came back before anything was shared out
    assert filled[1].kv_share_gib > cut[1].kv_share_gib


def test_a_waiting_model_gets_a_replica_next_to_the_running_ones_which_stay_put(problem) -> None:
    a = problem.configs[0].index
    counts = [0] * len(problem.configs)
    counts[a] = 1
    kv = [0.0] * len(problem.configs)
    kv[a] = 6.0
    base = _packed(problem, counts, kv)
    running = fill_kv(problem, base)
    out, packed = activate_on_demand(problem, running, {r.replica_id: r for r in base}, {"m2": 0.2}, GPUS, 0.0)
    assert packed is not None and not packed.dropped
    assert {r.model for r in out} == {"m0", "m2"}
    kept = next(r for r in out if r.model == "m0")
    assert kept.replica_id == running[0].replica_id and kept.gpu_ids == running[0].gpu_ids
    new = next(r for r in out if r.model == "m2")
    assert new.gpu_ids == kept.gpu_ids  # room next to the running replica, no second GPU
    unchanged, none = activate_on_demand(problem, out, {}, {"m2": 0.2}, GPUS, 0.0)
    assert none is None and unchanged == out  # it has a replica now: nothing to add


def test_an_activation_takes_the_cheapest_config_that_covers_the_rate_and_a_held_pool_first() -> None:
    """On the demo's spot fleet: tiny models go to the CPU worker, not to a free A100; a model whose rate one L4
    covers gets an L4, beside replicas on a held A100 it goes there; a rate no L4 covers takes the A100; spot
    pools are the spot tier's."""
    from controller.demo.run import DEMO_FLEET
    from controller.demo.spot import with_spot_pool
    from core.fleet import load_fleet
    from optimizers.on_demand import activation_config

    demo = with_spot_pool(load_fleet(DEMO_FLEET))
    problem = build_problem(demo, scenario_set(demo, [[1.0] * len(demo.model_names)]))
    m = {name: i for i, name in enumerate(demo.model_names)}
    pool = {p.name: i for i, p in enumerate(problem.pools)}
    pick = lambda model, rate, held=(): problem.pools[
        activation_config(problem, m[model], rate, {pool[h] for h in held}).pool_index].name
    assert pick("tiny-2l", 0.2) == "cpu"
    assert problem.on_demand[m["tiny-2l"]].pool_index == pool["a100"]  # what the program's own choice would take
    assert pick("chat-1b", 1.0) == "l4" and pick("chat-1b", 1.0, ["a100"]) == "a100"
    assert pick("chat-8b", 3.0) == "a100"  # 0.61 req/s per L4 within SLO
