"""`dedicated` and `muxserve`: static placements, computed once from expected rates."""

from __future__ import annotations

from optimizers.baselines import DedicatedPlanner, MuxServePlanner
from tests.factories import make_fleet
from tests.optimizers.baselines.states import placement, resident, state

EIGHT_B = {"arch": "Llama-3.1-8B", "tp_options": [1], "max_context_tokens": 8192}


def _fleet(num_gpus: int, models: list[str]):
    return make_fleet(
        pools=[{"name": "h100", "gpu": "H100-SXM", "count": num_gpus, "gpus_per_node": num_gpus}],
        models=[{"name": m, **EIGHT_B} for m in models],
    )


def test_dedicated_gives_every_model_gpus_of_its_own_and_sizes_by_load() -> None:
    fleet = _fleet(6, ["hot", "warm", "cold"])
    plan = DedicatedPlanner().plan(fleet, state(fleet, rates={"hot": 80.0, "warm": 1.0, "cold": 0.1}), None, 1.0)
    where = placement(plan)
    assert set(where) == {"hot", "warm", "cold"}
    assert not (where["hot"] & where["warm"]) and not (where["hot"] & where["cold"])
    assert len(where["hot"]) > 1 and len(where["warm"]) == len(where["cold"]) == 1
    assert {a.kind for a in plan.actions} == {"activate_model", "set_routing", "set_queue_order"}
    assert all(a.args.policy == "fcfs" for a in plan.actions if a.kind == "set_queue_order")


def test_dedicated_never_moves_anything() -> None:
    fleet = _fleet(4, ["a", "b"])
    first = DedicatedPlanner().plan(fleet, state(fleet, rates={"a": 10.0, "b": 0.1}), None, 1.0)
    later = state(fleet, time_s=600, plan=first, rates={"a": 0.1, "b": 50.0}, replicas=resident(first))
    second = DedicatedPlanner().plan(fleet, later, None, 1.0)
    assert second.actions == ()
    assert second.replicas == first.replicas and second.routing == first.routing
    assert second.parent_id == first.plan_id and second.generation == 1


def test_dedicated_says_which_models_get_no_gpu() -> None:
    fleet = _fleet(2, ["a", "b", "c"])
    plan = DedicatedPlanner().plan(fleet, state(fleet, rates={"a": 3.0, "b": 2.0, "c": 1.0}), None, 1.0)
    assert set(placement(plan)) == {"a", "b"}
    assert any("c" in r and "cannot be served" in r for r in plan.reasons)


def test_muxserve_colocates_unpopular_models_and_isolates_the_popular_one() -> None:
    fleet = _fleet(2, ["popular", "rare-1", "rare-2", "rare-3"])
    rates = {"popular": 30.0, "rare-1": 0.3, "rare-2": 0.2, "rare-3": 0.1}
    plan = MuxServePlanner().plan(fleet, state(fleet, rates=rates), None, 1.0)
    where = placement(plan)
    assert len(where["popular"]) == 1
    rare_gpus = where["rare-1"] | where["rare-2"] | where["rare-3"]
    assert len(rare_gpus) == 1 and not (rare_gpus & where["popular"])
    assert all(a.args.kv_limit_gib is None for a in plan.actions if a.kind == "activate_model"), "shared KV pool"


def test_muxserve_places_once_and_keeps_it() -> None:
    fleet = _fleet(2, ["a", "b", "c"])
    first = MuxServePlanner().plan(fleet, state(fleet, rates={"a": 5.0, "b": 1.0, "c": 0.5}), None, 1.0)
    later = state(fleet, time_s=300, plan=first, rates={"a": 0.0, "b": 0.0, "c": 40.0}, replicas=resident(first))
    second = MuxServePlanner().plan(fleet, later, None, 1.0)
    assert second.actions == () and second.replicas == first.replicas


def test_muxserve_shards_a_busy_model_over_a_mesh_when_tp_is_allowed() -> None:
    fleet = make_fleet(
        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}],
        models=[{"name": "big", "arch": "Llama-3.1-8B", "tp_options": [1, 2], "max_context_tokens": 8192}],
    )
    plan = MuxServePlanner().plan(fleet, state(fleet, rates={"big": 5.0}), None, 1.0)
    (rep,) = plan.replicas
    assert rep.tp == 2 and rep.gpu_ids == ("h100/0", "h100/1")


def test_muxserve_splits_a_model_too_busy_for_its_largest_mesh_over_several_meshes() -> None:
    fleet = _fleet(4, ["hot", "cold"])
    plan = MuxServePlanner().plan(fleet, state(fleet, rates={"hot": 120.0, "cold": 0.5}), None, 1.0)
    hot = plan.replicas_of("hot")
    assert len(hot) > 1 and len({r.gpu_ids for r in hot}) == len(hot), "units of one model on distinct meshes"
    assert set(plan.routing["hot"].values()) == {1.0}, "its units share its traffic equally"
