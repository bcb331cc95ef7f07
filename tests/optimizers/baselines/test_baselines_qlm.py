"""`qlm`: virtual queues reordered EDF when a violation is predicted; load balancing, model swap, eviction."""

from __future__ import annotations

from core.actions import EvictRequests, MigrateRequests, SetQueueOrder
from core.state import EventKind, RunningRequest
from optimizers.baselines import QLMPlanner
from tests.factories import make_fleet
from tests.optimizers.baselines.states import activated, deactivated, event, group, resident, state

SLOS = [
    {"name": "interactive", "ttft_s": 1.0, "tpot_s": 0.1, "priority": 0},
    {"name": "standard", "ttft_s": 20.0, "tpot_s": 0.2, "priority": 1},
]


def _fleet(num_gpus: int, models: list[str]):
    return make_fleet(
        pools=[{"name": "a10", "gpu": "A10", "count": num_gpus, "gpus_per_node": 1}],
        models=[{"name": m, "arch": "Llama-3.2-3B", "tp_options": [1], "max_context_tokens": 4096} for m in models],
        slo_classes=SLOS,
    )


def _start(fleet, rates):
    planner = QLMPlanner()
    first = planner.plan(fleet, state(fleet, rates=rates), None, 1.0)
    return planner, first


def test_qlm_uses_every_gpu_as_an_instance_of_one_model() -> None:
    fleet = _fleet(3, ["a", "b"])
    _, plan = _start(fleet, {"a": 5.0, "b": 1.0})
    assert len(plan.replicas) == 3 and len({r.gpu_ids for r in plan.replicas}) == 3
    assert sorted(r.model for r in plan.replicas) == ["a", "a", "b"]


def test_qlm_changes_nothing_while_no_violation_is_predicted() -> None:
    fleet = _fleet(2, ["a", "b"])
    planner, first = _start(fleet, {"a": 1.0, "b": 1.0})
    rid = first.replicas_of("a")[0].replica_id
    calm = [group("a", "standard", n=2, deadline_s=100.0, replica_id=rid)]
    plan = planner.plan(fleet, state(fleet, time_s=5, plan=first, rates={"a": 1.0, "b": 1.0},
                                     replicas=resident(first), groups=calm), None, 1.0)
    assert plan.actions == () and plan.solver.status == "unchanged"


def test_qlm_reorders_groups_earliest_deadline_first_when_a_violation_is_predicted() -> None:
    fleet = _fleet(1, ["a"])
    planner, first = _start(fleet, {"a": 1.0})
    rid = first.replicas[0].replica_id
    bulk = group("a", "standard", n=60, deadline_s=40.0, replica_id=rid, window_s=0)
    urgent = group("a", "interactive", n=2, deadline_s=11.0, replica_id=rid, window_s=10, arrival_s=10)
    st = state(fleet, time_s=10, plan=first, rates={"a": 1.0}, replicas=resident(first), groups=[bulk, urgent],
               events=[event(EventKind.SLO_VIOLATION_PREDICTED, 10.0, "a")])
    plan = planner.plan(fleet, st, None, 1.0)
    orders = [a.args for a in plan.actions if isinstance(a.args, SetQueueOrder)]
    assert orders == [SetQueueOrder(replica_id=rid, policy="explicit", group_ids=(urgent.group_id, bulk.group_id))]
    assert plan.queues[rid] == (urgent.group_id, bulk.group_id)


def test_qlm_balances_a_late_group_onto_another_instance_of_its_model() -> None:
    fleet = _fleet(3, ["a", "b"])
    planner, first = _start(fleet, {"a": 5.0, "b": 1.0})
    busy, idle = (r.replica_id for r in first.replicas_of("a"))
    # Both groups meet their deadlines only if they run on different instances.
    backlog = group("a", "standard", n=200, deadline_s=20.0, replica_id=busy, window_s=0)
    late = group("a", "interactive", n=100, deadline_s=21.0, replica_id=busy, window_s=5, arrival_s=5)
    st = state(fleet, time_s=5, plan=first, rates={"a": 5.0, "b": 1.0}, replicas=resident(first),
               groups=[backlog, late])
    plan = planner.plan(fleet, st, None, 1.0)
    moves = [a.args for a in plan.actions if isinstance(a.args, MigrateRequests)]
    assert moves and moves[0].from_replica_id == busy and moves[0].to_replica_id == idle
    assert not moves[0].include_running, "non-preemptive: only waiting requests move"


def test_qlm_swaps_a_model_in_for_requests_that_have_no_instance() -> None:
    fleet = _fleet(2, ["a", "b", "c"])
    planner, first = _start(fleet, {"a": 5.0, "b": 0.5, "c": 0.0})
    assert not first.replicas_of("c")
    waiting = group("c", "interactive", n=3, deadline_s=6.0, replica_id=None, window_s=5, arrival_s=5)
    st = state(fleet, time_s=5, plan=first, rates={"a": 5.0, "b": 0.5, "c": 0.6}, replicas=resident(first),
               groups=[waiting], events=[event(EventKind.REQUEST_FOR_INACTIVE_MODEL, 5.0, "c")])
    plan = planner.plan(fleet, st, None, 1.0)
    (act,) = activated(plan)
    (gone,) = deactivated(plan)
    assert act.model == "c" and gone.model in {"a", "b"} and act.gpu_ids[0] in gone.replica_id
    gone_seq = next(a.seq for a in plan.actions if a.args == gone)
    assert gone_seq in next(a.depends_on for a in plan.actions if a.args == act)
    assert any("model swap" in r for r in plan.reasons)


def test_qlm_evicts_lower_priority_running_work_for_a_late_head_group() -> None:
    fleet = _fleet(1, ["a"])
    planner, first = _start(fleet, {"a": 1.0})
    rid = first.replicas[0].replica_id
    running = resident(first)
    running[first.replicas[0].leader] = [s.model_copy(update={"num_running": 200}) for s in running["a10/0"]]
    urgent = group("a", "interactive", n=30, deadline_s=3.5, replica_id=rid, window_s=3, arrival_s=3)
    st = state(fleet, time_s=3, plan=first, rates={"a": 1.0}, replicas=running, groups=[urgent])
    plan = planner.plan(fleet, st, None, 1.0)
    evictions = [a.args for a in plan.actions if isinstance(a.args, EvictRequests)]
    assert evictions == [EvictRequests(replica_id=rid, slo_classes=("standard",), mode="swap")]


def test_qlm_names_the_running_requests_it_evicts_when_the_state_lists_them() -> None:
    fleet = _fleet(1, ["a"])
    planner, first = _start(fleet, {"a": 1.0})
    rid = first.replicas[0].replica_id
    running = resident(first)
    running["a10/0"] = [s.model_copy(update={"num_running": 200}) for s in running["a10/0"]]
    listed = [RunningRequest(i, rid, "a", "standard" if i % 2 else "interactive", 512, 10, 0.0) for i in range(6)]
    urgent = group("a", "interactive", n=30, deadline_s=3.5, replica_id=rid, window_s=3, arrival_s=3)
    st = state(fleet, time_s=3, plan=first, rates={"a": 1.0}, replicas=running, groups=[urgent], running=listed)
    plan = planner.plan(fleet, st, None, 1.0)
    (evict,) = [a.args for a in plan.actions if isinstance(a.args, EvictRequests)]
    assert evict.request_ids == (1, 3, 5) and evict.slo_classes == ()
