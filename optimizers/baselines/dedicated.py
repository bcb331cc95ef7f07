"""`dedicated`: static GPUs per model, FCFS — what a fleet of one vLLM deployment per model does.

Source: vLLM (Kwon et al., "Efficient Memory Management for Large Language Model Serving with PagedAttention",
SOSP'23) serves one model per engine on its own GPUs, first come first served; the multi-model papers (QLM SoCC'24,
MuxServe ICML'24, Prism arXiv 2505.04021) all use "a vLLM instance per model" as their static baseline.

Placement is computed once (`optimizers.baselines.sizing`): each model gets its own replica(s), sized by its
expected load, never shared with another model. After the first plan nothing moves: later plans repeat the
placement (dropping only replicas whose GPUs have left the fleet) and carry no actions.
"""

from __future__ import annotations

import time

from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.plan import Plan, SolverStats
from core.state import EventKind, FleetState
from optimizers.baselines.demand import expected_demand
from optimizers.baselines.draft import PlanDraft, replica_id
from optimizers.baselines.inventory import Inventory
from optimizers.baselines.sizing import size_replicas


class StaticPlanner:
    """A planner that places once and never changes: subclasses implement `place()` for the first plan."""

    name = "static"
    solver_name = "greedy"
    subscriptions: frozenset[EventKind] = frozenset()

    def __init__(self, latency: LatencyBook | None = None) -> None:
        self.latency = latency or LatencyBook()

    def plan(self, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None, budget_s: float) -> Plan:
        started = time.perf_counter()
        draft = PlanDraft(self.name, fleet, state, self.latency, queue_rule="fcfs")
        prev = state.current_plan
        status, tried = "heuristic", 0
        if prev is not None and prev.policy == self.name:
            keep_static(draft, prev)
        else:
            status, tried = self.place(draft, fleet, state, scenarios)
        return draft.build(SolverStats(name=self.solver_name, status=status, num_variables=tried,
                                       time_s=time.perf_counter() - started))

    def place(self, draft: PlanDraft, fleet: FleetSpec, state: FleetState,
              scenarios: ScenarioSet | None) -> tuple[str, int]:
        """Fill `draft` with the first placement; returns (solver status, candidates tried)."""
        raise NotImplementedError


class DedicatedPlanner(StaticPlanner):
    """One vLLM-style engine per replica, each model on GPUs of its own, FCFS queues; never replans."""

    name = "dedicated"
    solver_name = "greedy-sizing"

    def __init__(self, latency: LatencyBook | None = None, *, target_utilization: float = 0.75) -> None:
        if not 0 < target_utilization <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {target_utilization}")
        super().__init__(latency)
        self.target_utilization = target_utilization

    def place(self, draft: PlanDraft, fleet: FleetSpec, state: FleetState,
              scenarios: ScenarioSet | None) -> tuple[str, int]:
        inventory = Inventory(fleet, state)
        demand = expected_demand(fleet, state, scenarios)
        sized, reasons = size_replicas(fleet, inventory, self.latency, demand,
                                       target_utilization=self.target_utilization)
        for s in sized:
            draft.add_replica(s.model, s.pool, s.gpu_ids, s.tp, reason=s.reason)
            # Route in proportion to capacity: replicas on faster GPUs take more of their model's traffic.
            draft.routing.setdefault(s.model, {})[replica_id(s.model, s.gpu_ids)] = s.capacity_per_s
        idle = len(inventory) - sum(len(s.gpu_ids) for s in sized)
        draft.reasons.extend(reasons)
        draft.reasons.append(f"static placement: {len(sized)} replicas for {len(fleet.models)} models, "
                             f"{idle} GPU(s) left idle")
        return "heuristic", len(sized)


def keep_static(draft: PlanDraft, prev: Plan) -> None:
    """Repeat a static placement: keep every replica whose GPUs are all still healthy, change nothing else."""
    healthy = set(draft.state.healthy_gpu_ids)
    for rep in prev.replicas:
        if set(rep.gpu_ids) <= healthy:
            draft.keep(rep)
        else:
            draft.reasons.append(f"{rep.replica_id} lost a GPU; a static placement does not replace it")
    for model, weights in prev.routing.items():
        kept = {rid: w for rid, w in weights.items() if rid in draft.replicas}
        if kept:
            draft.routing[model] = kept
    draft.queues.update({rid: q for rid, q in prev.queues.items() if rid in draft.replicas})
    draft.reasons.append("static policy: placement unchanged")
