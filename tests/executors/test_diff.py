"""Plan diff on hand-built plans: make-before-break ordering, damping, drift, and the plan's own dependencies."""

from __future__ import annotations

import pytest

from core.actions import ActivateModel, DeactivateModel, Residency, ResizeKV, SetRouting
from core.errors import InputError
from executors.diff import DRIFT_SEQ_BASE, NO_DAMPING, Damping, Schedule, diff, drift_seq
from tests.executors.plans import make_plan, replica, seen, status

CHAT0 = replica("chat@h100/0", "chat", ("h100/0",))
CHAT1 = replica("chat@h100/1", "chat", ("h100/1",))


def _kinds(schedule: Schedule) -> list[tuple[str, str | None]]:
    return [(a.kind, getattr(a.args, "replica_id", getattr(a.args, "model", None))) for a in schedule.actions]


def _position(schedule: Schedule, kind: str, target: str) -> int:
    return _kinds(schedule).index((kind, target))


def _depends(schedule: Schedule, kind: str, target: str, on_kind: str, on_target: str) -> bool:
    """Whether the first action depends (directly or not) on the second."""
    by_seq = {a.seq: a for a in schedule.actions}
    start = schedule.actions[_position(schedule, kind, target)]
    goal = schedule.actions[_position(schedule, on_kind, on_target)].seq
    stack = list(start.depends_on)
    while stack:
        seq = stack.pop()
        if seq == goal:
            return True
        stack.extend(by_seq[seq].depends_on)
    return False


def test_moving_a_replica_activates_then_reroutes_then_deactivates() -> None:
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))), status("h100/1")]
    schedule = diff(observed, make_plan((CHAT1,)), routing={"chat": {"chat@h100/0": 1.0}})
    assert _kinds(schedule) == [("activate_model", "chat@h100/1"), ("set_routing", "chat"),
                                ("deactivate_model", "chat@h100/0")]
    assert _depends(schedule, "set_routing", "chat", "activate_model", "chat@h100/1")
    assert _depends(schedule, "deactivate_model", "chat@h100/0", "set_routing", "chat")
    route = schedule.actions[1]
    assert route.worker_id is None and route.args.weights == {"chat@h100/1": 1.0}
    assert all(a.reason.startswith("executor: ") for a in schedule.actions)
    assert schedule.actions[2].args.drain


def test_the_plans_own_actions_are_reordered_make_before_break() -> None:
    # The planner listed the break first and forgot every dependency.
    plan = make_plan((CHAT1,), (
        ("h100/0", DeactivateModel(model="chat", replica_id="chat@h100/0"), ()),
        (None, SetRouting(model="chat", weights={"chat@h100/1": 1.0}), ()),
        ("h100/1", ActivateModel(model="chat", replica_id="chat@h100/1", gpu_ids=("h100/1",), kv_limit_gib=20), ()),
    ))
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))), status("h100/1")]
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 1.0}})
    assert [a.seq for a in schedule.actions] == [2, 1, 0]
    assert schedule.added == frozenset()
    assert schedule.actions[1].depends_on == (2,) and schedule.actions[2].depends_on == (1,)  # (2,) through 1


def test_swapping_models_on_one_full_gpu_frees_before_loading() -> None:
    big = replica("big@h100/0", "big", ("h100/0",))
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",)))]
    schedule = diff(observed, make_plan((big,)), routing={"chat": {"chat@h100/0": 1.0}})
    assert _kinds(schedule) == [("set_routing", "chat"), ("deactivate_model", "chat@h100/0"),
                                ("activate_model", "big@h100/0"), ("set_routing", "big")]
    assert _depends(schedule, "activate_model", "big@h100/0", "deactivate_model", "chat@h100/0")
    assert schedule.actions[0].args.weights == {}


def test_two_full_gpus_trading_models_get_an_order_without_a_cycle() -> None:
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))),
                status("h100/1", seen("code@h100/1", "code", ("h100/1",)))]
    plan = make_plan((replica("chat@h100/1", "chat", ("h100/1",)), replica("code@h100/0", "code", ("h100/0",))))
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 1}, "code": {"code@h100/1": 1}})
    assert len(schedule.actions) == 6
    # On each GPU the old model leaves before the new one loads (memory is a hard limit) ...
    assert _depends(schedule, "activate_model", "chat@h100/1", "deactivate_model", "code@h100/1")
    assert _depends(schedule, "activate_model", "code@h100/0", "deactivate_model", "chat@h100/0")
    # ... so make-before-break holds for one model (chat) and gives way for the other (code).
    assert _depends(schedule, "deactivate_model", "chat@h100/0", "set_routing", "chat")
    assert not _depends(schedule, "deactivate_model", "code@h100/1", "set_routing", "code")


def test_tp_group_activation_waits_for_every_gpu_it_takes() -> None:
    observed = [status("h100/0"), status("h100/1", seen("code@h100/1", "code", ("h100/1",)))]
    plan = make_plan((replica("big@h100/0", "big", ("h100/0", "h100/1")),))
    schedule = diff(observed, plan, routing={"code": {"code@h100/1": 1.0}})
    assert _depends(schedule, "activate_model", "big@h100/0", "deactivate_model", "code@h100/1")
    activate = schedule.actions[_position(schedule, "activate_model", "big@h100/0")]
    assert activate.worker_id == "h100/0" and activate.args.tp == 2


def test_satisfied_plan_actions_are_dropped_with_a_reason() -> None:
    plan = make_plan((CHAT0,), (
        ("h100/0", ActivateModel(model="chat", replica_id="chat@h100/0", gpu_ids=("h100/0",), kv_limit_gib=20), ()),
        (None, SetRouting(model="chat", weights={"chat@h100/0": 3.0}), (0,)),
    ))
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",)))]
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 1.0}})
    assert schedule.actions == ()
    assert [s.action.seq for s in schedule.satisfied] == [0, 1]
    assert "already active" in schedule.satisfied[0].reason
    assert schedule.record.actions == plan.actions  # the log stores the plan's actions as the planner wrote them


def test_small_routing_and_kv_changes_are_damped_and_large_ones_are_not() -> None:
    plan = make_plan((CHAT0, replica("chat@h100/1", "chat", ("h100/1",), kv_gib=20.4)),
                     routing={"chat": {"chat@h100/0": 0.52, "chat@h100/1": 0.48}})
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))),
                status("h100/1", seen("chat@h100/1", "chat", ("h100/1",)))]
    current = {"chat": {"chat@h100/0": 0.5, "chat@h100/1": 0.5}}
    assert diff(observed, plan, routing=current).actions == ()
    undamped = diff(observed, plan, routing=current, damping=NO_DAMPING)
    assert sorted(_kinds(undamped)) == [("resize_kv", "chat@h100/1"), ("set_routing", "chat")]
    tilted = {"chat": {"chat@h100/0": 0.8, "chat@h100/1": 0.2}}
    assert _kinds(diff(observed, plan, routing=tilted)) == [("set_routing", "chat")]


def test_a_small_kv_change_is_not_damped_on_a_gpu_that_loads_a_model() -> None:
    code = replica("code@h100/0", "code", ("h100/0",))
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=19.8), code))
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",)))]
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 1.0}})
    assert _depends(schedule, "activate_model", "code@h100/0", "resize_kv", "chat@h100/0")


def test_a_routed_replica_is_never_deactivated_before_routing_leaves_it() -> None:
    # Damping must not keep traffic on a replica that goes away: a replica leaving the routing is structural.
    plan = make_plan((CHAT0,), routing={"chat": {"chat@h100/0": 1.0}})
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))),
                status("h100/1", seen("chat@h100/1", "chat", ("h100/1",)))]
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 0.98, "chat@h100/1": 0.02}},
                    damping=Damping(routing_min_share_change=0.5))
    assert _kinds(schedule) == [("set_routing", "chat"), ("deactivate_model", "chat@h100/1")]


def test_drift_a_restarted_worker_gets_its_replica_back() -> None:
    # The planner saw chat active on h100/0 and only resized it; the worker has restarted since and lost it.
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=24.0),),
                     (("h100/0", ResizeKV(replica_id="chat@h100/0", kv_limit_gib=24.0), ()),))
    schedule = diff([status("h100/0")], plan, routing={"chat": {"chat@h100/0": 1.0}})
    assert _kinds(schedule) == [("activate_model", "chat@h100/0")]
    activate = schedule.actions[0]
    assert schedule.added == {activate.seq} and activate.args.kv_limit_gib == 24.0
    assert "not observed" in activate.reason
    assert [(s.action.seq, s.reason) for s in schedule.satisfied] == [
        (0, f"the activation (seq {activate.seq}) sets this limit")]
    assert schedule.record.actions == (*plan.actions, activate)
    # The record read back from an action log (it carries the drift action) diffs to the same schedule.
    assert diff([status("h100/0")], schedule.record, routing={"chat": {"chat@h100/0": 1.0}}).actions == (activate,)


def test_added_actions_keep_their_key_from_one_diff_to_the_next() -> None:
    plan = make_plan((CHAT0, CHAT1))
    first = diff([status("h100/0"), status("h100/1")], plan, routing={})
    # Later the first activation has happened: the remaining actions keep their seqs (and idempotency keys).
    again = diff([status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))), status("h100/1")], plan, routing={})
    seqs = {(a.kind, a.worker_id): a.seq for a in first.actions}
    assert {(a.kind, a.worker_id): a.seq for a in again.actions}.items() < seqs.items()
    assert len(set(seqs.values())) == 3 and min(seqs.values()) >= DRIFT_SEQ_BASE
    assert drift_seq("h100/1", first.action(seqs[("activate_model", "h100/1")]).args) == seqs[("activate_model",
                                                                                                "h100/1")]


def test_drift_a_replica_that_died_is_reactivated_and_routing_waits_for_it() -> None:
    plan = make_plan((CHAT0, CHAT1), routing={"chat": {"chat@h100/0": 1, "chat@h100/1": 1}})
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))), status("h100/1")]
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 1.0}})
    assert _kinds(schedule) == [("activate_model", "chat@h100/1"), ("set_routing", "chat")]
    assert _depends(schedule, "set_routing", "chat", "activate_model", "chat@h100/1")


def test_a_replica_on_another_tp_group_is_reconfigured_and_host_targets_are_deactivated() -> None:
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0", "h100/1")),
                      replica("code@h100/2", "code", ("h100/2",), residency=Residency.HOST)),
                     routing={"chat": {"chat@h100/0": 1.0}})
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",))), status("h100/1"),
                status("h100/2", seen("code@h100/2", "code", ("h100/2",)))]
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 1.0}, "code": {"code@h100/2": 1.0}})
    kinds = _kinds(schedule)
    assert ("reconfigure_parallelism", "chat@h100/0") in kinds
    deactivate = schedule.actions[_position(schedule, "deactivate_model", "code@h100/2")]
    assert deactivate.args.to == Residency.HOST
    assert _depends(schedule, "deactivate_model", "code@h100/2", "set_routing", "code")


def test_unknown_routing_sends_the_plans_routing_and_unobserved_workers_keep_their_actions() -> None:
    plan = make_plan((CHAT0,), (("h100/9", DeactivateModel(model="chat", replica_id="chat@h100/9"), ()),),
                     routing={"chat": {"chat@h100/0": 1.0}})
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",)))]
    schedule = diff(observed, plan, routing=None)
    assert sorted(_kinds(schedule)) == [("deactivate_model", "chat@h100/9"), ("set_routing", "chat")]


def test_plan_dependencies_order_actions_and_bad_ones_are_input_errors() -> None:
    resize = ("h100/0", ResizeKV(replica_id="chat@h100/0", kv_limit_gib=30), ())
    plan = make_plan((replica("chat@h100/0", "chat", ("h100/0",), kv_gib=30),),
                     (("h100/0", ResizeKV(replica_id="chat@h100/0", kv_limit_gib=30), (1,)), resize))
    observed = [status("h100/0", seen("chat@h100/0", "chat", ("h100/0",)))]
    schedule = diff(observed, plan, routing={"chat": {"chat@h100/0": 1}}, damping=NO_DAMPING)
    assert [a.seq for a in schedule.actions] == [1, 0]
    cyclic = make_plan(actions=((None, SetRouting(model="a", weights={}), (1,)),
                                (None, SetRouting(model="b", weights={}), (0,))))
    with pytest.raises(InputError, match="cycle"):
        diff([], cyclic)
    dangling = make_plan(actions=((None, SetRouting(model="a", weights={}), (7,)),))
    with pytest.raises(InputError, match=r"actions\[seq=0\]\.depends_on: 7 is not allowed"):
        diff([], dangling)


def test_damping_thresholds_are_validated() -> None:
    with pytest.raises(InputError, match="damping.routing_min_share_change"):
        Damping(routing_min_share_change=1.5)


def test_a_replica_id_reported_by_two_workers_is_the_serving_copy() -> None:
    # Engines name host copies they were never asked to activate by their model, so ids can repeat across GPUs.
    observed = [status("h100/0", seen("b", "b", ("h100/0",), residency=Residency.HOST)),
                status("h100/1", seen("b", "b", ("h100/1",))),
                status("h100/2", seen("b", "b", ("h100/2",), residency=Residency.HOST))]
    plan = make_plan((replica("b", "b", ("h100/1",)),), routing={"b": {"b": 1.0}})
    assert diff(observed, plan, routing={"b": {"b": 1.0}}).actions == ()
