"""Drains inside a fleet simulation: a deactivation with drain completes when the replica has left, so an activation
that needs its memory (and depends on it) starts only then."""

from __future__ import annotations

import numpy as np
import pytest

from core.actions import Action, ActivateModel, DeactivateModel, Residency, SetRouting
from core.plan import Plan, Replica, SolverStats, make_plan_id
from core.state import EventKind
from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from tests.simulator.conftest import small_fleet, table


def _replica(model: str) -> Replica:
    return Replica(replica_id=f"{model}@h100/0", model=model, pool="h100", gpu_type="H100-SXM", gpu_ids=("h100/0",),
                   kv_share_gib=4.0)


class SwapModels:
    """First plan: serve `a` on the only GPU. Second plan (the 10 s tick): drain `a` to host memory, then activate
    `b` on the same GPU (two 32B models do not fit together), then route `b` to it."""

    name = "swap"
    subscriptions: frozenset[EventKind] = frozenset()

    def plan(self, fleet, state, scenarios, budget_s):
        gen = state.generation
        plan_id = make_plan_id(fleet.name, self.name, gen, "")

        def action(seq, args, deps=()):
            return Action(plan_id=plan_id, seq=seq, worker_id=None if isinstance(args, SetRouting) else "h100/0",
                          revision=gen, reason="test", depends_on=deps, args=args)

        if state.current_plan is None:
            model, actions = "a", (action(0, ActivateModel(model="a", replica_id="a@h100/0", gpu_ids=("h100/0",))),)
        elif state.current_plan.replicas[0].model == "a":
            model, actions = "b", (
                action(0, DeactivateModel(model="a", replica_id="a@h100/0", to=Residency.HOST)),
                action(1, ActivateModel(model="b", replica_id="b@h100/0", gpu_ids=("h100/0",)), (0,)),
                action(2, SetRouting(model="b", weights={"b@h100/0": 1.0}), (1,)),
            )
        else:
            model, actions = "b", ()
        rep = _replica(model)
        return Plan(plan_id=plan_id, fleet=fleet.name, policy=self.name, generation=gen, created_at_s=state.time_s,
                    replicas=(rep,), routing={model: {rep.replica_id: 1.0}}, actions=actions,
                    solver=SolverStats(name="test", status="heuristic"))


def test_an_activation_that_depends_on_a_drain_waits_for_the_replica_to_leave() -> None:
    fleet = small_fleet(models=[{"name": m, "arch": "Qwen2.5-32B", "tp_options": [1], "max_context_tokens": 8192}
                                for m in ("a", "b")],
                        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 1, "gpus_per_node": 1}])
    # a: one long request, still running at the 10 s replan; b: requests that wait for b's activation.
    t = table([1.0, 12.0, 13.0], models=("a", "b"), model_idx=np.array([0, 1, 1]), prompt=100,
              output=np.array([600, 10, 10]))
    sim = FleetSimulation(fleet, t, SwapModels(), config=SimConfig(replan_interval_s=10.0, check_invariants=True))
    res = sim.run()
    f = res.figures()
    assert f["requests"] == {"total": 3, "completed": 3, "dropped": 0}
    assert f["actions_by_status"]["deactivate_model:deferred"] == 1
    assert f["actions_by_status"]["activate_model:applied"] == 2  # b's did not fail for memory
    a_done = res.finish_s[0]
    assert a_done > 12.0  # still draining when b's requests arrived
    lm = sim.book.get(fleet.model("b").arch, fleet.pools[0].gpu, 1)
    # b loads after a left and its weights were copied to host memory, from disk (cold).
    assert res.first_token_s[1] > a_done + lm.host_to_gpu_s + lm.activate_from_cold_s
    assert sim.workers["h100/0"].status().replicas[0].residency is Residency.HOST  # a, warm
    assert res.first_token_s[1] == pytest.approx(res.first_token_s[2], abs=0.5)
