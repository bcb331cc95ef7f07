"""FleetSimulation runs: a golden run, exactness of decode runs, routing and waiting, on-demand activation,
GPU failures, the end-of-run sweep. Every run ends with every request completed or dropped with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from core.actions import Action, ActivateModel, SetRouting
from core.errors import InputError
from core.plan import Plan, Replica, SolverStats, digest, make_plan_id
from core.state import EventKind
from simulator.config import SimConfig
from simulator.fleet import AvailabilityChange, FleetSimulation
from simulator.planners import StaticPlanner
from tests.factories import make_table
from tests.simulator.conftest import small_fleet, table


class OnDemand:
    """Places nothing up front; activates a model on the next free GPU when a request for it waits."""

    name = "on-demand"
    subscriptions = frozenset({EventKind.REQUEST_FOR_INACTIVE_MODEL})

    def __init__(self, *, route_early: bool = False, one_gpu: bool = False) -> None:
        self.calls = []
        self.route_early = route_early  # no SetRouting after activation: the plan's routing applies at once
        self.one_gpu = one_gpu  # every model on the first GPU (they time-share it)

    def plan(self, fleet, state, scenarios, budget_s):
        self.calls.append((state.time_s, tuple(e.kind for e in state.events)))
        gen = state.generation
        plan_id = make_plan_id(fleet.name, self.name, gen, digest(state.time_s))
        replicas = list(state.current_plan.replicas) if state.current_plan else []
        used = {g for r in replicas for g in r.gpu_ids}
        actions = []
        for model in sorted({e.model for e in state.events if e.kind == EventKind.REQUEST_FOR_INACTIVE_MODEL}):
            if any(r.model == model for r in replicas):
                continue
            gpu = state.healthy_gpu_ids[0] if self.one_gpu else next(g for g in state.healthy_gpu_ids if g not in used)
            used.add(gpu)
            rep = Replica(replica_id=f"{model}@{gpu}", model=model, pool="h100", gpu_type="H100-SXM", gpu_ids=(gpu,),
                          kv_share_gib=10)
            replicas.append(rep)
            n = len(actions)
            actions.append(Action(plan_id=plan_id, seq=n, worker_id=gpu, revision=gen, reason="on demand",
                                  args=ActivateModel(model=model, replica_id=rep.replica_id, gpu_ids=(gpu,))))
            if not self.route_early:
                actions.append(Action(plan_id=plan_id, seq=n + 1, worker_id=None, revision=gen, reason="route",
                                      depends_on=(n,), args=SetRouting(model=model, weights={rep.replica_id: 1.0})))
        return Plan(plan_id=plan_id, fleet=fleet.name, policy=self.name, generation=gen, created_at_s=state.time_s,
                    replicas=tuple(replicas), routing={r.model: {r.replica_id: 1.0} for r in replicas},
                    actions=tuple(actions), solver=SolverStats(name="test", status="heuristic"))


def run(fleet, t, planner, **config):
    sim = FleetSimulation(fleet, t, planner, config=SimConfig(**config))
    return sim, sim.run()


def test_golden_static_run() -> None:
    """A seeded run's figures, recorded: any change to scheduling, latency or routing shows here."""
    _, res = run(small_fleet(), make_table(400, rate_per_s=25.0, seed=7), StaticPlanner())
    f = res.figures()
    assert f["requests"] == {"total": 400, "completed": 400, "dropped": 0}
    assert (f["slo_attainment"], f["events"], f["plans"]) == (1.0, 1821, 1)
    assert f["ttft_s"]["p50"] == pytest.approx(0.0263850, rel=1e-5)
    assert f["tpot_s"]["p50"] == pytest.approx(0.0093239, rel=1e-5)
    assert res.sim_end_s == pytest.approx(17.364451, rel=1e-6)
    assert f["gpu_hours"] == pytest.approx(2 * res.sim_end_s / 3600, rel=0.01)  # both GPUs billed all along


def _three_models_two_h100s():
    fleet = small_fleet(models=[{"name": "a", "arch": "Llama-3.1-8B", "tp_options": [1]},
                                {"name": "b", "arch": "Llama-3.2-3B", "tp_options": [1]},
                                {"name": "c", "arch": "Llama-3.2-1B", "tp_options": [1]}],
                        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}])
    rng = np.random.default_rng(1)
    n = 300
    return fleet, table(np.cumsum(rng.exponential(0.05, n)), models=("a", "b", "c"), model_idx=rng.integers(0, 3, n),
                        slo_idx=rng.integers(0, 2, n), prompt=rng.integers(10, 3000, n), output=rng.integers(1, 300, n))


def _kv_bound_l4s():
    """An 8B model on 24 GB L4s: ~4.6 GiB of KV each, so long requests preempt one another (swap or recompute)."""
    fleet = small_fleet(pools=[{"name": "l4", "gpu": "L4", "count": 2, "gpus_per_node": 1}],
                        models=[{"name": "chat", "arch": "Llama-3.1-8B", "tp_options": [1], "max_context_tokens": 8192}])
    rng = np.random.default_rng(5)
    n = 300
    return fleet, table(np.cumsum(rng.exponential(0.1, n)), slo_idx=rng.integers(0, 2, n),
                        prompt=rng.integers(100, 5000, n), output=rng.integers(1, 1500, n))


class FixedPlacement(StaticPlanner):
    """StaticPlanner with the placement given: (model, gpu ids) pairs."""

    def __init__(self, placement) -> None:
        super().__init__()
        self.placement = placement

    def _place(self, fleet, state, shares):
        pool = fleet.pools[0]
        return [Replica(replica_id=f"{m}@{ids[0]}", model=m, pool=pool.name, gpu_type=pool.gpu.name, gpu_ids=ids,
                        tp=len(ids), kv_share_gib=1.0) for m, ids in self.placement], []


def _tp_group_and_a_model_on_its_member():
    """An 8B model at TP 2 on two L4s and a 3B model on the member: they compete for the member's memory (the
    group's KV mirrors there page for page), so both preempt under load."""
    fleet = small_fleet(pools=[{"name": "l4", "gpu": "L4", "count": 2, "gpus_per_node": 2}],
                        models=[{"name": "big", "arch": "Llama-3.1-8B", "tp_options": [2], "max_context_tokens": 8192},
                                {"name": "small", "arch": "Llama-3.2-3B", "tp_options": [1],
                                 "max_context_tokens": 8192}])
    rng = np.random.default_rng(11)
    n = 300
    t = table(np.cumsum(rng.exponential(0.08, n)), models=("big", "small"), model_idx=rng.integers(0, 2, n),
              slo_idx=rng.integers(0, 2, n), prompt=rng.integers(100, 5000, n), output=rng.integers(1, 800, n))
    return fleet, t, lambda: FixedPlacement([("big", ("l4/0", "l4/1")), ("small", ("l4/1",))])


@pytest.mark.parametrize("scenario", [
    lambda: (*_three_models_two_h100s(), StaticPlanner), lambda: (*_kv_bound_l4s(), StaticPlanner),
    _tp_group_and_a_model_on_its_member,
], ids=["three-models", "kv-bound", "tp-member"])
def test_runs_of_decodes_give_exactly_what_single_iterations_give(scenario) -> None:
    fleet, t, planner = scenario()
    _, fast = run(fleet, t, planner(), run_ahead=True, check_invariants=True)
    _, slow = run(fleet, t, planner(), run_ahead=False)
    np.testing.assert_allclose(fast.first_token_s, slow.first_token_s, rtol=1e-9)
    np.testing.assert_allclose(fast.finish_s, slow.finish_s, rtol=1e-9)
    np.testing.assert_array_equal(fast.preemptions, slow.preemptions)
    assert fast.figures()["requests"]["completed"] == len(t)
    # Fewer events, except where the GPUs of a TP group have work of their own at once: no runs form there.
    assert fast.figures()["events"] <= slow.figures()["events"] - (planner is StaticPlanner)


def test_a_model_activated_while_another_decodes_joins_the_turns_exactly() -> None:
    """The second model's weights finish loading in the middle of the first one's run of decodes: the run is cut
    there, as single iterations would have let the new model in."""
    fleet = small_fleet(models=[{"name": m, "arch": "Llama-3.2-1B", "tp_options": [1]} for m in ("a", "b")])
    t = table([0.0, 0.2, 5.0, 5.05, 30.0], models=("a", "b"), model_idx=np.array([0, 0, 1, 1, 0]), prompt=200,
              output=np.array([3000, 3000, 50, 50, 400]))
    _, fast = run(fleet, t, OnDemand(route_early=True, one_gpu=True), run_ahead=True, check_invariants=True)
    _, slow = run(fleet, t, OnDemand(route_early=True, one_gpu=True), run_ahead=False)
    np.testing.assert_allclose(fast.first_token_s, slow.first_token_s, rtol=1e-9)
    np.testing.assert_allclose(fast.finish_s, slow.finish_s, rtol=1e-9)
    assert fast.figures()["requests"]["completed"] == 5 and fast.figures()["events"] < slow.figures()["events"]


def test_a_tp_group_and_a_model_on_its_member_share_the_members_memory() -> None:
    fleet, t, planner = _tp_group_and_a_model_on_its_member()
    sim, res = run(fleet, t, planner(), check_invariants=True)
    f = res.figures()
    assert f["requests"] == {"total": 300, "completed": 300, "dropped": 0}
    assert f["preemptions"] > 0  # memory was contended …
    member = sim.workers["l4/1"]
    assert member.pool.num_mirrored_pages == 0 and member.status().member_of == ("big@l4/0",)  # … and all returned


def test_requests_wait_at_the_router_for_an_activation_on_demand() -> None:
    planner = OnDemand()
    sim, res = run(small_fleet(), table([0.0, 0.5, 1.0, 20.0], prompt=100, output=10), planner)
    f = res.figures()
    assert f["requests"]["completed"] == 4 and f["waited_at_router"] == 3 and f["waited_for_activation"] == 0
    assert planner.calls[1] == (1.0, (EventKind.REQUEST_FOR_INACTIVE_MODEL,))  # 1 s after the first plan (debounce)
    activation = sim.book.get(sim.fleet.model("chat").arch, sim.fleet.pools[0].gpu, 1).activate_from_cold_s
    assert res.first_token_s[0] == pytest.approx(1.0 + activation, abs=0.05)  # waited for the weights to load
    assert f["actions"] == {"activate_model": 1, "set_routing": 1}


class Nothing:
    name = "nothing"
    subscriptions = frozenset()

    def plan(self, fleet, state, scenarios, budget_s):
        gen = state.generation
        return Plan(plan_id=make_plan_id(fleet.name, self.name, gen, ""), fleet=fleet.name, policy=self.name,
                    generation=gen, created_at_s=state.time_s, solver=SolverStats(name="none", status="heuristic"))


def test_requests_routed_to_a_loading_replica_wait_there_for_its_weights() -> None:
    _, res = run(small_fleet(), table([0.0, 0.5, 2.0, 3.0], prompt=100, output=10), OnDemand(route_early=True))
    f = res.figures()
    assert f["requests"]["completed"] == 4 and f["waited_at_router"] == 2 and f["waited_for_activation"] == 4
    assert f["actions"] == {"activate_model": 1}


def test_requests_with_no_replica_are_dropped_after_the_router_timeout() -> None:
    _, res = run(small_fleet(), table([0.0, 1.0, 2.0]), Nothing(), router_timeout_s=5.0)
    f = res.figures()
    assert f["requests"] == {"total": 3, "completed": 0, "dropped": 3}
    assert f["dropped_by_reason"] == {"no_replica_timeout": 3} and f["slo_attainment"] == 0.0


def test_a_gpu_lost_mid_run_sends_its_requests_back_to_the_router() -> None:
    t = make_table(300, rate_per_s=20.0, seed=2, output_tokens=200)
    changes = [AvailabilityChange(5.0, "h100/1", False), AvailabilityChange(12.0, "h100/1", True)]
    sim = FleetSimulation(small_fleet(), t, StaticPlanner(), availability=changes,
                          config=SimConfig(check_invariants=True))
    res = sim.run()
    f = res.figures()
    assert f["requests"]["completed"] == 300 and f["recomputed_tokens"] > 0
    assert res.gpu_seconds_by_pool["h100"] == pytest.approx(res.sim_end_s + 5.0, rel=0.01)  # h100/1 billed 5 s
    with pytest.raises(InputError, match="availability.gpu_id"):
        FleetSimulation(small_fleet(), t, StaticPlanner(), availability=[AvailabilityChange(1.0, "a100/0", False)])


def test_requests_unfinished_after_the_drain_timeout_are_dropped_with_a_reason() -> None:
    _, res = run(small_fleet(), table([0.0, 0.1], output=5000, prompt=100), StaticPlanner(), drain_timeout_s=2.0)
    assert res.figures()["dropped_by_reason"] == {"unfinished_at_end": 2}
    assert res.sim_end_s == pytest.approx(2.1)


def test_several_models_time_share_one_gpu() -> None:
    fleet = small_fleet(models=[{"name": f"m{i}", "arch": "Llama-3.2-1B", "tp_options": [1]} for i in range(3)],
                        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 1, "gpus_per_node": 1}])
    rng = np.random.default_rng(0)
    t = table(np.cumsum(rng.exponential(0.02, 200)), models=("m0", "m1", "m2"), model_idx=rng.integers(0, 3, 200))
    sim, res = run(fleet, t, StaticPlanner(), check_invariants=True)
    assert res.figures()["requests"]["completed"] == 200
    assert len(sim.workers["h100/0"].replicas) == 3


def test_workloads_must_name_fleet_models_and_classes() -> None:
    with pytest.raises(InputError, match="workload model"):
        FleetSimulation(small_fleet(), table([0.0], models=("ghost",)), StaticPlanner())
    with pytest.raises(InputError, match="workload slo_class"):
        FleetSimulation(small_fleet(), table([0.0], slo_names=("vip",)), StaticPlanner())


def test_scenarios_are_asked_for_at_every_plan() -> None:
    seen = []
    sim = FleetSimulation(small_fleet(), table([0.0, 30.0]), StaticPlanner(), config=SimConfig(replan_interval_s=10),
                          scenarios_fn=lambda state: seen.append(state.time_s))
    sim.run()
    assert seen == [0.0, 10.0, 20.0, 30.0]


def test_a_run_is_the_same_in_every_process() -> None:
    """Seeded runs replay exactly, whatever the interpreter's hash seed (no set or hash order leaks in)."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib; from tests.simulator.test_fleet import _three_models_two_h100s, run; "
        "from simulator.planners import StaticPlanner; f, t = _three_models_two_h100s(); "
        "_, r = run(f, t, StaticPlanner()); "
        "print(hashlib.sha256(r.first_token_s.tobytes() + r.finish_s.tobytes()).hexdigest())"
    )
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(digests) == 1


def test_attainment_by_hand_with_simple_coefficients() -> None:
    """10 ms per iteration + 9 ms per prefill token, decode otherwise free; targets TTFT 1 s, TPOT 100 ms.

    a and b arrive together (50-token prompts, 2 output tokens): a prefills alone (0.46 s → TTFT 0.46); then a's
    second token and b's prefill share one iteration (0.46 s → b's TTFT 0.92, a's TPOT 0.46: a misses); b's last
    token takes 10 ms (TPOT 0.01). c is offline (batch): it attains by finishing."""
    from core.latency import LatencyBook, LatencyModel

    lm = LatencyModel(arch="Llama-3.1-8B", gpu_type="H100-SXM", tp=1, c0_s=0.01, c_prefill_s=0.009, c_attn_s=0.0,
                      c_decode_s=0.0, c_kv_s=0.0, disk_to_host_s=1.0, host_to_gpu_s=1.0, kv_swap_bytes_per_s=1e10,
                      kv_bytes_per_token=131072)
    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 1, "gpus_per_node": 1}])
    t = table([0.0, 0.0, 5.0], slo_idx=np.array([0, 0, 1]), prompt=50, output=2)
    sim = FleetSimulation(fleet, t, StaticPlanner(), book=LatencyBook(profiles={("Llama-3.1-8B", "H100-SXM", 1): lm}))
    res = sim.run()
    np.testing.assert_allclose(res.ttft_s, [0.46, 0.92, 0.46])
    np.testing.assert_allclose(res.tpot_s, [0.46, 0.01, 0.01])
    f = res.figures()
    assert f["slo_attainment"] == pytest.approx(2 / 3) and f["ttft_attainment"] == 1.0
    assert f["tpot_attainment"] == pytest.approx(2 / 3)
    assert f["per_class"]["batch"]["slo_attainment"] == 1.0
    assert f["goodput_tokens_per_s"] == pytest.approx(4 / 5.47)  # b's and c's tokens over 0 … 5.47 s
