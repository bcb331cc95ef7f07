"""`FleetwisePlanner`: the `fleetwise` policy — placement (minutes), queues (seconds) and liveput, in one plan.

Each call: (1) re-place when the placement is older than `placement_interval_s` or an event invalidates it (GPUs
added or removed, a preemption notice, a request for an inactive model, a failed action), else keep the running
replicas; (2) order the waiting request groups on the replicas (queue planner) with the time left; (3) assemble the
plan: actions make-before-break with reasons, expected outcome per scenario, solver statistics. The planner keeps
the time of its last placement between calls (its only state).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.plan import Plan, SolverStats, digest
from core.state import EventKind, FleetState
from optimizers.outcome import expected_outcome, scenarios_from_load
from optimizers.placement.packing import PlacedReplica, pack, replica_items
from optimizers.placement.problem import PlacementProblem, PlacementSettings, build_problem
from optimizers.placement.solve import PlacementResult, solve_placement
from optimizers.plan import (
    RunningReplica, diff_actions, make_plan, routing_weights, running_replicas, to_core_replicas,
)
from optimizers.queue_actions import plan_queues
from optimizers.queues import QueueSettings

REPLACE_ON = frozenset({EventKind.GPU_ADDED, EventKind.GPU_REMOVED, EventKind.PREEMPTION_NOTICE,
                        EventKind.REQUEST_FOR_INACTIVE_MODEL, EventKind.ACTION_FAILED})


@dataclass
class FleetwisePlanner:
    """Implements `core.protocols.Planner` (name `fleetwise`)."""

    book: LatencyBook = field(default_factory=LatencyBook)
    settings: PlacementSettings = field(default_factory=PlacementSettings)
    queue_settings: QueueSettings = field(default_factory=QueueSettings)
    placement_interval_s: float = 300.0
    horizon_intervals: int = 1
    name: str = "fleetwise"
    subscriptions: frozenset[EventKind] = REPLACE_ON | {EventKind.SLO_VIOLATION_PREDICTED, EventKind.QUEUE_BUILDUP}
    _last_placement_s: float | None = field(default=None, repr=False)

    def plan(self, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None, budget_s: float) -> Plan:
        """A plan within about `budget_s` seconds; never raises for infeasible demand (see Planner)."""
        start = time.perf_counter()
        reasons: list[str] = []
        if scenarios is None:
            scenarios = scenarios_from_load(fleet, state)
            reasons.append("no forecast given: scenarios at 0.7×, 1× and 1.4× the observed rates")
        healthy = set(state.healthy_gpu_ids) if state.workers else None
        weights = {m.name: m.weight_gib for m in fleet.models}
        running = running_replicas(state, weights)
        problem = build_problem(
            fleet, scenarios, book=self.book, healthy=healthy, horizon_intervals=self.horizon_intervals,
            current=[(r.model, r.pool, r.tp, r.kv_share_gib * (1 if r.tp == 1 else 0)) for r in running],
            host_models=_host_models(state), settings=self.settings)
        stages: dict[str, float] = {}
        placement = None
        if self._must_place(state):
            placement = solve_placement(problem, time_limit_s=max(0.2, 0.7 * budget_s))
            stages["placement"] = time.perf_counter() - start
            self._last_placement_s = state.time_s
        targets, dropped, packer = self._targets(problem, placement, running, fleet, healthy)
        stages["packing"] = time.perf_counter() - start - sum(stages.values())
        reasons += dropped
        rate_of = {t.replica_id: problem.configs[t.config_index].online.rate_at(t.kv_share_gib) for t in targets}
        queue = plan_queues(state, fleet, targets, rate_of, scenarios, self.book, self.queue_settings,
                            budget_s=max(0.02, budget_s - (time.perf_counter() - start)))
        stages["queues"] = time.perf_counter() - start - sum(stages.values())
        return self._assemble(fleet, state, scenarios, problem, placement, targets, running, rate_of, queue,
                              reasons, stages, packer, start)

    def _must_place(self, state: FleetState) -> bool:
        if self._last_placement_s is None or state.current_plan is None:
            return True
        if any(e.kind in REPLACE_ON for e in state.events):
            return True
        return state.time_s - self._last_placement_s >= self.placement_interval_s

    def _targets(self, problem: PlacementProblem, placement: PlacementResult | None, running: list[RunningReplica],
                 fleet: FleetSpec, healthy: set[str] | None) -> tuple[list[PlacedReplica], list[str], str]:
        """Pack the placement onto GPUs, or keep the running replicas when the placement is reused."""
        if placement is None:
            index = {(c.model, problem.pools[c.pool_index].name, c.tp): c.index for c in problem.configs}
            kept = [PlacedReplica(r.replica_id, r.model, r.pool, r.gpu_type, r.tp, r.gpu_ids, r.kv_share_gib,
                                  r.memory_gib, 0.0, index.get((r.model, r.pool, r.tp), 0)) for r in running
                    if (r.model, r.pool, r.tp) in index]
            return kept, [], "kept"
        current: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
        index = {(c.model, problem.pools[c.pool_index].name, c.tp): c.index for c in problem.configs}
        for r in running:
            if (k := index.get((r.model, r.pool, r.tp))) is not None:
                current.setdefault(k, []).append((r.replica_id, r.gpu_ids))
        d = placement.decision
        items = replica_items(problem, d.replicas, d.kv_gib, d.capacity_rps, current)
        gpu_ids = {p.name: [g for g in p.gpu_ids() if healthy is None or g in healthy] for p in fleet.pools}
        packed = pack(problem, items, gpu_ids, time_limit_s=0.5)
        return list(packed.replicas), [f"not placed: {x}" for x in packed.dropped], packed.packer

    def _assemble(self, fleet, state, scenarios, problem, placement, targets, running, rate_of, queue, reasons,
                  stages, packer, start) -> Plan:  # noqa: ANN001
        routing = routing_weights(targets, rate_of)
        host = placement.decision.host_models if placement else frozenset()
        why = _why(problem, placement)
        activate = {c.model: c.activate_host_s for c in problem.configs}
        usable = {g: problem.pools[i].usable_gib for i, p in enumerate(fleet.pools) for g in p.gpu_ids()}
        unmet = placement.unmet_rps if placement else np.zeros_like(problem.demand_rps)
        used = np.array([len({g for t in targets if t.pool == p.name for g in t.gpu_ids}) for p in problem.pools])
        expected = expected_outcome(problem, placement.decision, unmet, used) if placement else None
        reasons = reasons + _plan_reasons(problem, placement, expected, len(targets), len(running)) + queue.reasons

        def build(b) -> None:  # noqa: ANN001
            route = diff_actions(b, targets, running, usable_gib=usable, routing=routing, host_models=host, why=why,
                                 activate_s=activate)
            queue.emit(b, route)

        pools = {c.model: (problem.pools[c.pool_index].name, problem.pools[c.pool_index].gpu_type)
                 for c in problem.configs}
        solver = _solver_stats(placement, packer, queue.name, stages, time.perf_counter() - start)
        key = digest(fleet.name, state.time_s, scenarios.demand_rps, scenarios.available_gpus,
                     tuple(sorted(r.replica_id for r in running)), tuple(g.group_id for g in state.groups))
        return make_plan(fleet=fleet.name, policy=self.name, state=state, digest=key, horizon_s=problem.horizon_s,
                         build=build, expected=expected, solver=solver, reasons=reasons,
                         replicas=to_core_replicas(targets, host, pools), routing=routing, queues=queue.orders)


def _host_models(state: FleetState) -> frozenset[str]:
    from core.actions import Residency

    return frozenset(r.model for w in state.workers for r in w.replicas if r.residency == Residency.HOST)


def _why(problem: PlacementProblem, placement: PlacementResult | None) -> dict[str, str]:
    """model → a short reason: its demand in the busiest scenario and the capacity it was given."""
    if placement is None:
        return {}
    cap = placement.decision.capacity_rps
    online = problem.online_demand()
    out = {}
    for m, model in enumerate(problem.models):
        given = sum(cap[c.index] for c in problem.configs_of_model(m)) if cap is not None else 0.0
        out[model.name] = (f"demand up to {online[:, m].max():.2f} req/s across scenarios, "
                           f"SLO capacity placed {given:.2f} req/s")
    return out


def _plan_reasons(problem, placement, expected, num_targets: int, num_running: int) -> list[str]:  # noqa: ANN001
    if placement is None:
        return [f"placement reused: {num_targets} replicas kept (no event requires re-placing)"]
    out = [f"placement: {num_targets} replicas (was {num_running}) by {placement.warm_start}, status "
           f"{placement.status}, {placement.time_s:.2f} s"]
    if expected is not None and expected.overall.unmet_requests_per_s > 1e-6:
        pen = problem.penalty_usd()
        worst = max(problem.classes, key=lambda c: expected.overall.per_class[c.name] < 1)
        out.append(f"demand exceeds SLO capacity: {expected.overall.unmet_requests_per_s:.2f} req/s expected unmet "
                   f"(priced at {pen.max():.4f} USD per request for the top class; lowest attainment in "
                   f"'{worst.name}': {expected.overall.per_class[worst.name]:.3f})")
    return out


def _solver_stats(placement, packer: str, queue_name: str, stages: dict[str, float], total_s: float) -> SolverStats:  # noqa: ANN001
    if placement is None:
        return SolverStats(name=f"reuse+{queue_name}", status="heuristic", time_s=total_s, stages=stages)
    return SolverStats(name=f"highs+{packer}+{queue_name}", status=placement.status, objective=placement.objective_usd,
                       gap=placement.gap, time_s=total_s, num_variables=placement.num_variables,
                       num_constraints=placement.num_constraints, warm_start=placement.warm_start, stages=stages)
