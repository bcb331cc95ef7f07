"""Every baseline keeps the Planner contract: healthy GPUs only, memory respected, reasons, deterministic ids,
dependencies that point backwards."""

from __future__ import annotations

import pytest

from core.actions import ActivateModel
from core.fleet import load_fleet
from core.latency import LatencyBook
from core.plan import SolverStats
from core.protocols import Planner
from optimizers.baselines import BASELINES
from optimizers.baselines.draft import PlanDraft
from optimizers.baselines.inventory import Inventory, MemoryLedger
from tests.factories import EXAMPLES
from tests.optimizers.baselines.states import state

FLEET = load_fleet(EXAMPLES / "small-hetero.yaml")
ZIPF_RATES = {m: 5.5 / (i + 1) / 2.718 for i, m in enumerate(FLEET.model_names)}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_are_planners_with_a_name(name: str) -> None:
    planner = BASELINES[name]()
    assert isinstance(planner, Planner)
    assert planner.name == name


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_plans_keep_the_contract(name: str) -> None:
    st = state(FLEET, rates=ZIPF_RATES, unhealthy=["h100/2", "l4/0"])
    plan = BASELINES[name]().plan(FLEET, st, None, 1.0)
    assert plan.replicas, "every baseline places something when it knows the load"
    used = {g for r in plan.replicas for g in r.gpu_ids}
    assert not used & {"h100/2", "l4/0"}
    assert all(a.reason for a in plan.actions)
    assert all(all(d < a.seq for d in a.depends_on) for a in plan.actions)
    assert [a.seq for a in plan.actions] == list(range(len(plan.actions)))
    assert all(a.revision == plan.generation for a in plan.actions)
    ledger = MemoryLedger(Inventory(FLEET, st))
    for r in plan.replicas:
        assert ledger.can_place(FLEET.model(r.model), r.gpu_ids, r.tp), f"{r.replica_id} overcommits memory"
        ledger.place(FLEET.model(r.model), r.gpu_ids, r.tp)
    again = BASELINES[name]().plan(FLEET, st, None, 1.0)
    assert again.model_copy(update={"solver": plan.solver}) == plan, "same inputs, same plan (ids included)"


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_model_is_routed_to_its_replicas(name: str) -> None:
    plan = BASELINES[name]().plan(FLEET, state(FLEET, rates=ZIPF_RATES), None, 1.0)
    for model, weights in plan.routing.items():
        assert set(weights) == {r.replica_id for r in plan.replicas_of(model)}
        assert sum(weights.values()) > 0


def test_draft_frees_a_gpu_before_activating_on_it() -> None:
    st0 = state(FLEET, rates=ZIPF_RATES)
    first = PlanDraft("t", FLEET, st0, LatencyBook(), queue_rule="fcfs")
    first.add_replica("llama8b-0", "h100", ("h100/0",), 1, kv_share_gib=10, reason="start")
    first.add_replica("llama8b-1", "h100", ("h100/1",), 1, kv_share_gib=10, reason="start")
    plan0 = first.build(SolverStats(name="t", status="heuristic"))
    second = PlanDraft("t", FLEET, state(FLEET, time_s=5, plan=plan0), LatencyBook(), queue_rule="fcfs")
    second.keep(plan0.replicas[1])
    second.add_replica("qwen-14b", "h100", ("h100/0",), 1, kv_share_gib=10, reason="swap in")
    plan1 = second.build(SolverStats(name="t", status="heuristic"))
    kinds = {a.kind: a for a in plan1.actions}
    assert set(kinds) == {"deactivate_model", "activate_model", "set_routing", "set_queue_order"}
    act = kinds["activate_model"]
    assert isinstance(act.args, ActivateModel) and act.args.model == "qwen-14b"
    assert kinds["deactivate_model"].seq in act.depends_on
    assert plan1.parent_id == plan0.plan_id and plan1.generation == 1
