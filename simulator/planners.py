"""`StaticPlanner`: places every model once and never changes the placement — the trivial planner the speed
benchmark and the simulator's own tests run (the real baselines live in optimizers/baselines).

Placement, greedy by popularity: every model gets one replica on the GPU group with the most free memory that
holds its weights plus one full-context sequence of KV (models share GPUs when they outnumber them); then each
GPU still empty gets another replica of the model with the most demand per replica. TP groups take whole free GPUs
of one node; each model uses its smallest TP degree that fits. Routing splits a model's requests equally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.actions import Action, ActivateModel, SetRouting
from core.catalog import GIB
from core.fleet import FleetSpec, PoolSpec, ServedModel
from core.forecast import ScenarioSet
from core.plan import Plan, Replica, SolverStats, digest, make_plan_id
from core.state import EventKind, FleetState


@dataclass
class _Gpu:
    gpu_id: str
    pool: PoolSpec
    node: int
    free_bytes: float
    models: int = 0


class StaticPlanner:
    """See the module docstring. `shares`: relative demand per model (default: the scenarios' mean demand, else
    uniform)."""

    name = "static"
    subscriptions: frozenset[EventKind] = frozenset()

    def __init__(self, shares: Mapping[str, float] | None = None) -> None:
        self.shares = dict(shares) if shares else None

    def plan(self, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None, budget_s: float) -> Plan:
        prev = state.current_plan
        if prev is not None:
            return self._build(fleet, state, prev.replicas, [], ["placement unchanged (static)"])
        shares = self._shares(fleet, scenarios)
        replicas, reasons = self._place(fleet, state, shares)
        return self._build(fleet, state, tuple(replicas), replicas, reasons)

    def _shares(self, fleet: FleetSpec, scenarios: ScenarioSet | None) -> dict[str, float]:
        if self.shares is not None:
            return {m: float(self.shares.get(m, 0.0)) for m in fleet.model_names}
        if scenarios is not None:
            mean = scenarios.expected_demand_rps().mean(axis=1)
            return {m: float(mean[scenarios.model_index(m)]) if m in scenarios.models else 0.0
                    for m in fleet.model_names}
        return {m: 1.0 for m in fleet.model_names}

    def _place(self, fleet: FleetSpec, state: FleetState, shares: dict[str, float]) -> tuple[list[Replica], list[str]]:
        healthy = set(state.healthy_gpu_ids) if state.workers else set(fleet.gpu_ids())
        gpus = [_Gpu(g, p, p.node_of(i), fleet.usable_bytes_per_gpu(p.gpu))
                for p in fleet.pools for i, g in enumerate(p.gpu_ids()) if g in healthy]
        order = sorted(fleet.models, key=lambda m: (-shares.get(m.name, 0.0), m.name))
        placed: list[Replica] = []
        reasons: list[str] = []
        for model in order:
            rep = self._place_one(fleet, gpus, model, shared=True)
            if rep is None:
                reasons.append(f"{model.name}: fits no GPU group with room left")
            else:
                placed.append(rep)
        while True:
            counts = {m.name: sum(r.model == m.name for r in placed) for m in order}
            candidates = sorted((m for m in order if counts[m.name]), key=lambda m: (
                -shares.get(m.name, 0.0) / counts[m.name], m.name))
            rep = next((r for m in candidates if (r := self._place_one(fleet, gpus, m, shared=False))), None)
            if rep is None:
                break
            placed.append(rep)
        reasons.append(f"static placement: {len(placed)} replicas on {sum(g.models > 0 for g in gpus)} GPUs")
        return placed, reasons

    @staticmethod
    def _place_one(fleet: FleetSpec, gpus: list[_Gpu], model: ServedModel, *, shared: bool) -> Replica | None:
        for pool in fleet.pools:
            for tp in model.tp_options:
                if tp > pool.gpus_per_node or not fleet.fit(model, pool.gpu, tp).fits:
                    continue
                need = model.arch.weight_bytes / tp + model.max_context_tokens * model.arch.kv_bytes_per_token_per_gpu(tp)
                group = _group(gpus, pool, tp, need, shared=shared)
                if group:
                    for g in group:
                        g.free_bytes -= need
                        g.models += 1
                    ids = tuple(g.gpu_id for g in group)
                    kv_gib = max(group[0].free_bytes, 0.0) / GIB
                    return Replica(replica_id=f"{model.name}@{ids[0]}", model=model.name, pool=pool.name,
                                   gpu_type=pool.gpu.name, gpu_ids=ids, tp=tp, kv_share_gib=kv_gib)
        return None

    def _build(self, fleet: FleetSpec, state: FleetState, replicas: tuple[Replica, ...], new: list[Replica],
               reasons: list[str]) -> Plan:
        generation = state.generation
        inputs = digest(self.name, [r.replica_id for r in replicas], generation)
        plan_id = make_plan_id(fleet.name, self.name, generation, inputs)
        routing: dict[str, dict[str, float]] = {}
        for r in replicas:
            routing.setdefault(r.model, {})[r.replica_id] = 1.0
        actions: list[Action] = []
        for r in new:
            actions.append(Action(plan_id=plan_id, seq=len(actions), worker_id=r.leader, revision=generation,
                                  args=ActivateModel(model=r.model, replica_id=r.replica_id, tp=r.tp, gpu_ids=r.gpu_ids),
                                  reason=f"static: place {r.model} on {', '.join(r.gpu_ids)}"))
        activations = {a.args.replica_id: a.seq for a in actions}  # type: ignore[union-attr]
        for model, weights in sorted(routing.items()):
            deps = tuple(activations[rid] for rid in sorted(weights) if rid in activations)
            if deps:
                actions.append(Action(plan_id=plan_id, seq=len(actions), worker_id=None, revision=generation,
                                      args=SetRouting(model=model, weights=weights), depends_on=deps,
                                      reason=f"static: spread {model} over {len(weights)} replicas"))
        return Plan(plan_id=plan_id, parent_id=state.current_plan.plan_id if state.current_plan else None,
                    fleet=fleet.name, policy=self.name, generation=generation, created_at_s=state.time_s,
                    input_digest=inputs, replicas=replicas, routing=routing, actions=tuple(actions),
                    solver=SolverStats(name="greedy", status="heuristic"), reasons=tuple(reasons))


def _group(gpus: list[_Gpu], pool: PoolSpec, tp: int, need: float, *, shared: bool) -> list[_Gpu] | None:
    """`tp` GPUs of one node of `pool` with `need` bytes free each (shared: the most free first; else empty ones)."""
    in_pool = [g for g in gpus if g.pool.name == pool.name and g.free_bytes >= need and (shared or g.models == 0)]
    if tp == 1:
        return [max(in_pool, key=lambda g: (g.free_bytes, -gpus.index(g)))] if in_pool else None
    nodes: dict[int, list[_Gpu]] = {}
    for g in in_pool:
        if g.models == 0:
            nodes.setdefault(g.node, []).append(g)
    return next((members[:tp] for members in nodes.values() if len(members) >= tp), None)
