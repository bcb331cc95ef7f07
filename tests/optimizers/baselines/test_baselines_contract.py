"""Every baseline keeps the Planner contract: healthy GPUs only, memory respected, reasons, deterministic ids,
dependencies that point backwards."""

from __future__ import annotations

import pytest

from core.actions import ActivateModel, DeactivateModel, ResizeKV
from core.catalog import GIB
from core.fleet import load_fleet
from core.latency import LatencyBook
from core.plan import SolverStats
from core.protocols import Planner
from optimizers.baselines import BASELINES
from optimizers.baselines.draft import PlanDraft
from optimizers.baselines.inventory import Inventory, MemoryLedger
from tests.factories import EXAMPLES
from tests.optimizers.baselines.states import resident, state

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
    first.add_replica("llama8b-0", "h100", ("h100/0",), 1, reason="start")
    first.add_replica("llama8b-1", "h100", ("h100/1",), 1, reason="start")
    plan0 = first.build(SolverStats(name="t", status="heuristic"))
    second = PlanDraft("t", FLEET, state(FLEET, time_s=5, plan=plan0, replicas=resident(plan0)), LatencyBook(),
                       queue_rule="fcfs")
    second.keep(plan0.replicas[1])
    second.add_replica("qwen-14b", "h100", ("h100/0",), 1, reason="swap in")
    plan1 = second.build(SolverStats(name="t", status="heuristic"))
    kinds = {a.kind: a for a in plan1.actions}
    assert set(kinds) == {"deactivate_model", "activate_model", "set_routing", "set_queue_order"}
    act = kinds["activate_model"]
    assert isinstance(act.args, ActivateModel) and act.args.model == "qwen-14b"
    assert kinds["deactivate_model"].seq in act.depends_on
    assert plan1.parent_id == plan0.plan_id and plan1.generation == 1


def test_tp_replicas_sharing_gpus_get_kv_limits_that_fit() -> None:
    st0 = state(FLEET, rates=ZIPF_RATES)
    first = PlanDraft("t", FLEET, st0, LatencyBook(), queue_rule="fcfs")
    first.add_replica("llama8b-0", "h100", ("h100/0", "h100/1"), 2, reason="alone")
    plan0 = first.build(SolverStats(name="t", status="heuristic"))
    (alone,) = [a.args for a in plan0.actions if isinstance(a.args, ActivateModel)]
    assert alone.kv_limit_gib is None, "alone on its GPUs: the shared pool, no limit"
    second = PlanDraft("t", FLEET, state(FLEET, time_s=5, plan=plan0, replicas=resident(plan0)), LatencyBook(),
                       queue_rule="fcfs")
    second.keep(plan0.replicas[0], kv_weight=3.0)
    second.add_replica("qwen-14b", "h100", ("h100/0", "h100/1"), 2, reason="neighbour", kv_weight=1.0)
    plan1 = second.build(SolverStats(name="t", status="heuristic"))
    resize = next(a for a in plan1.actions if isinstance(a.args, ResizeKV))
    act = next(a for a in plan1.actions if isinstance(a.args, ActivateModel))
    assert resize.seq in act.depends_on
    shares = {r.model: r.kv_share_gib for r in plan1.replicas}
    assert resize.args.kv_limit_gib == shares["llama8b-0"] and act.args.kv_limit_gib == shares["qwen-14b"]
    assert shares["llama8b-0"] > shares["qwen-14b"], "the share follows the planner's weights"
    usable = FLEET.usable_bytes_per_gpu(FLEET.pool("h100").gpu) / GIB
    weights = sum(FLEET.model(m).weight_gib / 2 for m in shares)
    assert sum(shares.values()) + weights <= usable + 1e-6


def test_draft_diffs_against_what_the_workers_report() -> None:
    """An activation that never happened (superseded by a newer plan, or failed) is ordered again; a replica the
    plan no longer wants is deactivated even if an older plan had already dropped it."""
    first = PlanDraft("t", FLEET, state(FLEET), LatencyBook(), queue_rule="fcfs")
    first.add_replica("llama8b-0", "h100", ("h100/0",), 1, reason="start")
    first.add_replica("llama8b-1", "h100", ("h100/1",), 1, reason="start")
    plan0 = first.build(SolverStats(name="t", status="heuristic"))
    only_one = {"h100/0": resident(plan0)["h100/0"]}
    second = PlanDraft("t", FLEET, state(FLEET, time_s=5, plan=plan0, replicas=only_one), LatencyBook(),
                       queue_rule="fcfs")
    for rep in plan0.replicas:
        second.keep(rep)
    plan1 = second.build(SolverStats(name="t", status="heuristic"))
    assert [a.args.replica_id for a in plan1.actions if isinstance(a.args, ActivateModel)] == ["llama8b-1@h100/1"]


def test_draft_reactivates_a_draining_replica_it_wants_and_leaves_one_it_dropped_to_drain() -> None:
    """Workers report a draining replica as active with `draining`: a plan that still wants it activates it again
    (the engine cancels the drain); one the plan dropped is not deactivated a second time."""
    first = PlanDraft("t", FLEET, state(FLEET), LatencyBook(), queue_rule="fcfs")
    first.add_replica("llama8b-0", "h100", ("h100/0",), 1, reason="start")
    first.add_replica("llama8b-1", "h100", ("h100/1",), 1, reason="start")
    plan0 = first.build(SolverStats(name="t", status="heuristic"))
    seen = {gpu: [r.model_copy(update={"draining": True}) for r in reps] for gpu, reps in resident(plan0).items()}
    second = PlanDraft("t", FLEET, state(FLEET, time_s=5, plan=plan0, replicas=seen), LatencyBook(),
                       queue_rule="fcfs")
    second.keep(next(r for r in plan0.replicas if r.leader == "h100/0"))
    plan1 = second.build(SolverStats(name="t", status="heuristic"))
    assert [a.args.replica_id for a in plan1.actions if isinstance(a.args, ActivateModel)] == ["llama8b-0@h100/0"]
    assert not [a for a in plan1.actions if isinstance(a.args, DeactivateModel)]
