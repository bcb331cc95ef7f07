import pytest
from pydantic import TypeAdapter, ValidationError

from core.actions import ACTION_KINDS, Action, ActivateModel, ApplyResult, ResizeKV
from core.plan import Plan, Replica, SolverStats, make_plan_id


def _plan() -> Plan:
    pid = make_plan_id("f", "fleetwise", 3, "abc")
    act = Action(plan_id=pid, seq=0, worker_id="h100/0", revision=3, reason="chat is hot",
                 args=ActivateModel(model="chat", replica_id="chat@h100/0", gpu_ids=("h100/0",)))
    rep = Replica(replica_id="chat@h100/0", model="chat", pool="h100", gpu_type="H100-SXM", gpu_ids=("h100/0",),
                  kv_share_gib=40.0)
    return Plan(plan_id=pid, fleet="f", policy="fleetwise", generation=3, created_at_s=0.0, replicas=(rep,),
                actions=(act,), solver=SolverStats(name="greedy", status="heuristic"))


def test_plan_round_trips_through_json_with_typed_action_args() -> None:
    plan = _plan()
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again == plan
    assert isinstance(again.actions[0].args, ActivateModel)
    assert again.actions[0].idempotency_key == f"{plan.plan_id}:0"
    assert again.action_counts() == {"activate_model": 1}


def test_plan_ids_are_deterministic() -> None:
    assert make_plan_id("f", "qlm", 1, "d") == make_plan_id("f", "qlm", 1, "d")
    assert make_plan_id("f", "qlm", 1, "d") != make_plan_id("f", "qlm", 2, "d")


def test_plans_are_immutable() -> None:
    with pytest.raises(ValidationError):
        _plan().generation = 4  # type: ignore[misc]


def test_unknown_action_kind_and_negative_limit_are_rejected() -> None:
    adapter = TypeAdapter(Action)
    base = {"plan_id": "p", "seq": 0, "worker_id": "w", "revision": 0, "reason": "r"}
    with pytest.raises(ValidationError, match="kind"):
        adapter.validate_python({**base, "args": {"kind": "format_disk"}})
    with pytest.raises(ValidationError, match="greater than or equal"):
        adapter.validate_python({**base, "args": {"kind": "resize_kv", "replica_id": "x", "kv_limit_gib": -1}})
    ok = adapter.validate_python({**base, "args": {"kind": "resize_kv", "replica_id": "x", "kv_limit_gib": 2}})
    assert isinstance(ok.args, ResizeKV)
    assert len(ACTION_KINDS) == 12


def test_apply_result_ok_covers_deferred() -> None:
    assert ApplyResult(idempotency_key="p:0", status="deferred").ok
    assert not ApplyResult(idempotency_key="p:0", status="stale").ok


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_kv_limit_must_be_a_finite_size(value: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        ResizeKV(replica_id="r", kv_limit_gib=value)
    with pytest.raises(ValidationError, match="finite"):
        ActivateModel(model="m", replica_id="r", gpu_ids=("g",), kv_limit_gib=value)
