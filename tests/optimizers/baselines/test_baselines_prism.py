"""`prism`: KV-pressure placement with a move threshold, activation on demand, eviction after 45 s idle under
memory pressure, EDF queues."""

from __future__ import annotations

from core.actions import Residency
from core.state import EventKind
from core.status import ReplicaStatus
from optimizers.baselines import PrismPlanner
from tests.factories import make_fleet
from tests.optimizers.baselines.states import activated, deactivated, event, group, placement, resident, state


def _fleet(pools: list[dict], models: list[str], arch: str = "Llama-3.1-8B", tp: list[int] | None = None):
    return make_fleet(pools=pools, models=[
        {"name": m, "arch": arch, "tp_options": tp or [1], "max_context_tokens": 8192} for m in models])


def _idle(plan, idle_since: dict[str, float]) -> dict[str, list[ReplicaStatus]]:
    """Worker statuses after `plan`: each replica active, its last request at `idle_since[model]`."""
    out = resident(plan)
    return {g: [r.model_copy(update={"last_request_s": idle_since.get(r.model, 0.0)}) for r in reps]
            for g, reps in out.items()}


def test_prism_spreads_models_by_kv_pressure_with_edf_queues() -> None:
    fleet = _fleet([{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}], ["a", "b", "c", "d"])
    plan = PrismPlanner().plan(fleet, state(fleet, rates={"a": 8.0, "b": 4.0, "c": 3.0, "d": 1.0}), None, 1.0)
    where = placement(plan)
    assert where["a"] != where["b"], "the two heaviest models go to different GPUs"
    assert where["c"] == where["b"] and where["d"] == where["a"], "then each to the least-pressured GPU"
    assert {a.args.policy for a in plan.actions if a.kind == "set_queue_order"} == {"edf"}


def test_prism_moves_a_model_only_past_the_threshold() -> None:
    fleet = _fleet([{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}], ["a", "b", "c"])
    planner = PrismPlanner()
    first = planner.plan(fleet, state(fleet, rates={"a": 5.0, "b": 4.0, "c": 1.0}), None, 1.0)
    nudged = state(fleet, time_s=61, plan=first, rates={"a": 5.0, "b": 4.0, "c": 1.5}, replicas=resident(first))
    assert planner.plan(fleet, nudged, None, 1.0).actions == ()
    shifted = state(fleet, time_s=61, plan=first, rates={"a": 0.5, "b": 9.0, "c": 9.0}, replicas=resident(first))
    moved = planner.plan(fleet, shifted, None, 1.0)
    assert activated(moved) and deactivated(moved)
    assert any("moved past τ" in a.reason for a in moved.actions)


def test_prism_replaces_only_every_60_seconds() -> None:
    fleet = _fleet([{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}], ["a", "b", "c"])
    planner = PrismPlanner()
    first = planner.plan(fleet, state(fleet, rates={"a": 5.0, "b": 4.0, "c": 1.0}), None, 1.0)
    early = state(fleet, time_s=30, plan=first, rates={"a": 0.5, "b": 9.0, "c": 9.0}, replicas=resident(first))
    assert planner.plan(fleet, early, None, 1.0).actions == ()


def test_prism_activates_an_inactive_model_on_demand_on_the_least_pressured_gpu() -> None:
    fleet = _fleet([{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}], ["a", "b"])
    planner = PrismPlanner()
    first = planner.plan(fleet, state(fleet, rates={"a": 5.0}), None, 1.0)
    assert set(placement(first)) == {"a"}
    st = state(fleet, time_s=10, plan=first, rates={"a": 5.0}, replicas=resident(first),
               groups=[group("b", "interactive", n=1, deadline_s=11.0, replica_id=None, window_s=10)],
               events=[event(EventKind.REQUEST_FOR_INACTIVE_MODEL, 10.0, "b")])
    plan = planner.plan(fleet, st, None, 1.0)
    (act,) = activated(plan)
    assert act.model == "b" and set(act.gpu_ids).isdisjoint(placement(first)["a"])
    assert "on demand" in next(a.reason for a in plan.actions if a.kind == "activate_model")


def test_prism_evicts_an_idle_model_after_45_s_under_memory_pressure() -> None:
    fleet = _fleet([{"name": "h100", "gpu": "H100-SXM", "count": 1, "gpus_per_node": 1}], ["busy", "quiet"])
    planner = PrismPlanner()
    first = planner.plan(fleet, state(fleet, rates={"busy": 5.0, "quiet": 0.2}), None, 1.0)
    assert set(placement(first)) == {"busy", "quiet"}

    def plan_at(t: float, kv_used: float):
        st = state(fleet, time_s=t, plan=first, rates={"busy": 5.0, "quiet": 0.0},
                   replicas=_idle(first, {"busy": t, "quiet": 0.0}), kv_used={"h100/0": kv_used},
                   events=[event(EventKind.MODEL_IDLE, t, "quiet")])
        return planner.plan(fleet, st, None, 1.0)

    assert deactivated(plan_at(30.0, kv_used=0.95)) == [], "idle 30 s: kept (evicting earlier thrashes)"
    assert deactivated(plan_at(50.0, kv_used=0.30)) == [], "idle 50 s but memory is not tight: kept"
    (gone,) = deactivated(plan_at(50.0, kv_used=0.95))
    assert gone.model == "quiet" and gone.to == Residency.HOST


def test_prism_evicts_idle_models_to_make_room_for_an_activation() -> None:
    fleet = _fleet([{"name": "l4", "gpu": "L4", "count": 1, "gpus_per_node": 1}], ["old", "new"])
    planner = PrismPlanner()
    first = planner.plan(fleet, state(fleet, rates={"old": 1.0}), None, 1.0)
    assert set(placement(first)) == {"old"}
    st = state(fleet, time_s=100, plan=first, rates={"new": 1.0}, replicas=_idle(first, {"old": 10.0}),
               groups=[group("new", "interactive", n=1, deadline_s=101.0, replica_id=None, window_s=100)],
               events=[event(EventKind.REQUEST_FOR_INACTIVE_MODEL, 100.0, "new")])
    plan = planner.plan(fleet, st, None, 1.0)
    assert [d.model for d in deactivated(plan)] == ["old"] and [a.model for a in activated(plan)] == ["new"]
    assert any("evicted to make room for new" in r for r in plan.reasons)


def test_prism_places_tp_models_on_one_node() -> None:
    fleet = _fleet([{"name": "a100", "gpu": "A100-40GB", "count": 4, "gpus_per_node": 2}], ["big"],
                   arch="Qwen2.5-32B", tp=[2])
    plan = PrismPlanner().plan(fleet, state(fleet, rates={"big": 1.0}), None, 1.0)
    (rep,) = plan.replicas
    assert rep.tp == 2 and fleet.pool("a100").node_of(int(rep.gpu_ids[0][-1])) == fleet.pool("a100").node_of(
        int(rep.gpu_ids[1][-1]))


def test_prism_gives_a_model_busier_than_one_gpu_several_anti_affine_replicas() -> None:
    fleet = _fleet([{"name": "h100", "gpu": "H100-SXM", "count": 4, "gpus_per_node": 4}], ["hot", "cold"])
    plan = PrismPlanner().plan(fleet, state(fleet, rates={"hot": 120.0, "cold": 1.0}), None, 1.0)
    hot = plan.replicas_of("hot")
    assert len(hot) > 1 and len({g for r in hot for g in r.gpu_ids}) == len(hot)
