"""The two-stage stochastic placement program in Pyomo (farmer pattern: one function per stage, labelled sections).

First stage (here and now, shared by every scenario):
  n[k]   replicas of config k (model, pool, TP) — integer; TP = 1 replicas share GPUs, TP > 1 take whole GPUs
  kv[k]  KV memory of config k's replicas, GiB per GPU summed over replicas (TP = 1 configs; a perspective variable)
  g[p]   GPUs of pool p that host TP = 1 replicas (time-shared, one KV pool per GPU) — integer
  h[m]   model m's weights kept warm in host memory — binary (residency: active if n > 0, else host or cold)
  cap[k] SLO-feasible requests/s the config's replicas offer (the compute it reserves on shared GPUs)
Second stage (per scenario s, after demand and availability are revealed):
  u[m, c]      requests/s of class c left unserved within SLO (priced: never infeasible); the rest is served by
               the surviving capacity Σₖ σ·cap[k], offline work by the compute online capacity leaves
  ah[m], ac[m] a replica activated on demand from host / from disk (at most one per model and scenario: the
               reactive path for a model the first stage left inactive)

Capacity of n replicas sharing kv GiB is the perspective of the capacity table's concave envelope,
`cap ≤ aⱼ·n + bⱼ·kv` for every segment j; a scenario serves up to `σ·cap` (σ: hypergeometric survival of the
scenario's availability), and the compute shares `cap/μ` of the replicas time-sharing a pool's g GPUs stay under
`max_gpu_utilization·g`. Only a handful of variables per model are scenario-specific, which keeps 16 scenarios cheap.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo

from optimizers.placement.problem import PlacementProblem, ReplicaConfig


def on_demand_config(problem: PlacementProblem, m: int) -> ReplicaConfig | None:
    """The config a scenario activates for model m on demand (`PlacementProblem.on_demand`)."""
    return problem.on_demand[m]


def useful_capacity(problem: PlacementProblem) -> np.ndarray:
    """(K,) the most SLO capacity one replica of each config can usefully offer: its table's maximum, capped by the
    model's largest online demand over the scenarios divided by the config's survival there.

    `cap[k] ≤ useful[k]·n[k]` is valid (capacity beyond what config k alone needs to cover every scenario's demand
    serves nothing; any optimum can be cut down to it) and it is what makes the relaxation honest about a replica's
    fixed cost: without it a tail model with demand d takes n = d / rate_max of a replica and pays that fraction of
    its weight memory; with it, serving d needs a whole replica, as in any integer solution.
    """
    online = problem.online_demand()  # (S, M)
    out = np.zeros(len(problem.configs))
    for c in problem.configs:
        sigma = problem.survival[:, c.index]
        need = np.divide(online[:, c.model_index], sigma, out=np.zeros_like(sigma), where=sigma > 1e-9)
        out[c.index] = min(c.online_rate_max, float(need.max(initial=0.0)))
    return out


def build_first_stage(model: pyo.ConcreteModel, problem: PlacementProblem) -> None:
    """Sets, parameters, variables, constraints and the cost of the first stage."""
    st, cur = problem.settings, problem.current
    hours = problem.horizon_s / 3600
    # -- sets -----------------------------------------------------------------------------------------------------
    model.K = pyo.Set(initialize=range(len(problem.configs)))
    model.K1 = pyo.Set(initialize=[c.index for c in problem.configs if c.shares_gpus])
    model.P = pyo.Set(initialize=range(len(problem.pools)))
    model.M = pyo.Set(initialize=range(len(problem.models)))
    cfg = problem.configs
    # -- variables ------------------------------------------------------------------------------------------------
    model.n = pyo.Var(model.K, domain=pyo.NonNegativeIntegers, bounds=lambda _, k: (0, _max_replicas(problem, cfg[k])))
    model.kv = pyo.Var(model.K1, domain=pyo.NonNegativeReals)
    model.g = pyo.Var(model.P, domain=pyo.NonNegativeIntegers, bounds=lambda _, p: (0, problem.pools[p].num_gpus))
    model.h = pyo.Var(model.M, domain=pyo.Binary)
    model.up = pyo.Var(model.K, domain=pyo.NonNegativeReals)
    model.down = pyo.Var(model.K, domain=pyo.NonNegativeReals)
    model.resize = pyo.Var(model.K1, domain=pyo.NonNegativeReals)
    model.cap = pyo.Var(model.K, domain=pyo.NonNegativeReals)  # SLO-feasible req/s of the config's replicas
    # -- constraints ----------------------------------------------------------------------------------------------
    model.kv_hi = pyo.Constraint(model.K1, rule=lambda b, k: b.kv[k] <= cfg[k].kv_max_gib * b.n[k])
    model.kv_lo = pyo.Constraint(model.K1, rule=lambda b, k: b.kv[k] >= cfg[k].kv_min_gib * b.n[k])
    model.SEG = pyo.Set(dimen=2, initialize=[(k, j) for k in model.K1 for j in range(len(cfg[k].online.segments))])
    model.pwl = pyo.Constraint(model.SEG, rule=lambda b, k, j: _segment(b, cfg[k], j))
    useful = useful_capacity(problem)
    model.useful = pyo.Constraint(model.K, rule=lambda b, k: b.cap[k] <= float(useful[k]) * b.n[k])
    model.pool_compute = pyo.Constraint(model.P, rule=lambda b, p: _pool_compute(b, problem, p))
    model.memory = pyo.Constraint(model.P, rule=lambda b, p: _pool_memory(b, problem, p))
    model.inventory = pyo.Constraint(model.P, rule=lambda b, p: b.g[p] + sum(
        c.tp * b.n[c.index] for c in problem.configs_of_pool(p) if not c.shares_gpus) <= problem.pools[p].num_gpus)
    model.tp_nodes = pyo.Constraint(_tp_groups(problem), rule=lambda b, p, t: _tp_node_limit(b, problem, p, t))
    model.churn = pyo.Constraint(model.K, rule=lambda b, k: b.n[k] - int(cur.replicas[k]) == b.up[k] - b.down[k])
    model.resize_up = pyo.Constraint(model.K1, rule=lambda b, k: b.resize[k] >= b.kv[k] - float(cur.kv_gib[k]))
    model.resize_dn = pyo.Constraint(model.K1, rule=lambda b, k: b.resize[k] >= float(cur.kv_gib[k]) - b.kv[k])
    if problem.grow_only:  # KV taken from what runs, priced below
        model.shrink = pyo.Var(model.K1, domain=pyo.NonNegativeReals)
        model.shrink_def = pyo.Constraint(model.K1, rule=lambda b, k: b.shrink[k] >= float(cur.kv_gib[k]) - b.kv[k])
    model.host = pyo.Constraint(expr=sum(model.h[m] * problem.models[m].weight_gib for m in model.M)
                                <= st.host_cache_gib)
    # -- stage cost -----------------------------------------------------------------------------------------------
    gpus = sum(problem.pools[p].price_per_hour * hours * model.g[p] for p in model.P) + sum(
        problem.pools[c.pool_index].price_per_hour * hours * c.tp * model.n[c.index]
        for c in cfg if not c.shares_gpus)
    churn = st.churn_usd_per_replica * sum(model.up[k] + model.down[k] for k in model.K)
    if problem.grow_only:  # a surge adds capacity; taking it from what runs is priced out unless nothing else fits
        churn = churn + st.surge_removal_usd * sum(model.down[k] for k in model.K) \
            + st.surge_shrink_usd_per_gib * sum(model.shrink[k] for k in model.K1)
    model.first_stage_cost = pyo.Expression(expr=gpus + churn + st.resize_usd_per_gib * sum(
        model.resize[k] for k in model.K1) + st.host_residency_usd * sum(model.h[m] for m in model.M))


def build_scenario_block(block: pyo.Block, problem: PlacementProblem, s: int) -> None:
    """One scenario's recourse: serve its demand within the surviving capacity, activate on demand, price the rest."""
    top = block.model()
    demand = problem.demand_rps[s]
    online = [c for c, cls in enumerate(problem.classes) if cls.online]
    offline = [c for c, cls in enumerate(problem.classes) if not cls.online]
    od = dict(enumerate(problem.on_demand))
    # -- sets -----------------------------------------------------------------------------------------------------
    block.MC = pyo.Set(initialize=[(m, c) for m in top.M for c in range(len(problem.classes)) if demand[m, c] > 0])
    block.MA = pyo.Set(initialize=[m for m in top.M if od[m] is not None and demand[m, online].sum() > 0
                                   and m in problem.rarely_used])
    # -- variables ------------------------------------------------------------------------------------------------
    block.u = pyo.Var(block.MC, domain=pyo.NonNegativeReals, bounds=lambda _, m, c: (0, float(demand[m, c])))
    block.ah = pyo.Var(block.MA, domain=pyo.NonNegativeReals, bounds=(0, 1))
    block.ac = pyo.Var(block.MA, domain=pyo.NonNegativeReals, bounds=(0, 1))
    # -- constraints ----------------------------------------------------------------------------------------------
    block.online = pyo.Constraint(top.M, rule=lambda b, m: _online_balance(b, problem, m, online, s, od[m]))
    block.offline = pyo.Constraint(top.M, rule=lambda b, m: _offline_balance(b, problem, m, offline, s))
    block.warm_only = pyo.Constraint(block.MA, rule=lambda b, m: b.ah[m] <= top.h[m])
    block.one_activation = pyo.Constraint(block.MA, rule=lambda b, m: b.ah[m] + b.ac[m] <= 1)
    block.spare = pyo.Constraint(top.P, rule=lambda b, p: _spare(b, problem, p, s, od))
    # -- stage cost -----------------------------------------------------------------------------------------------
    pen = problem.penalty_usd()
    hours = problem.horizon_s / 3600
    unmet = sum(float(pen[c]) * problem.horizon_s * block.u[m, c] for m, c in block.MC)
    activations = sum((problem.settings.churn_usd_per_replica + problem.pools[od[m].pool_index].price_per_hour  # type: ignore[union-attr]
                       * hours * od[m].tp) * (block.ah[m] + block.ac[m]) for m in block.MA)  # type: ignore[union-attr]
    block.stage_cost = pyo.Expression(expr=unmet + activations)


def build_model(problem: PlacementProblem) -> pyo.ConcreteModel:
    """The extensive form: the first stage, one block per scenario, and the expected total cost."""
    model = pyo.ConcreteModel(name="fleetwise-placement")
    build_first_stage(model, problem)
    model.S = pyo.Set(initialize=range(problem.num_scenarios))
    model.scenario = pyo.Block(model.S, rule=lambda b, s: build_scenario_block(b, problem, s))
    model.cost = pyo.Objective(expr=model.first_stage_cost + sum(
        float(problem.weights[s]) * model.scenario[s].stage_cost for s in model.S), sense=pyo.minimize)
    return model


# -- constraint bodies ------------------------------------------------------------------------------------------------

def _max_replicas(problem: PlacementProblem, c: ReplicaConfig) -> int:
    pool = problem.pools[c.pool_index]
    return pool.num_gpus if c.shares_gpus else pool.num_nodes * (pool.gpus_per_node // c.tp)


def _tp_groups(problem: PlacementProblem) -> list[tuple[int, int]]:
    return sorted({(c.pool_index, c.tp) for c in problem.configs if not c.shares_gpus})


def _tp_node_limit(b: pyo.Block, problem: PlacementProblem, p: int, t: int) -> object:
    """TP groups never span nodes: at most ⌊GPUs per node / t⌋ groups of degree t (or larger) per node."""
    pool = problem.pools[p]
    groups = [c for c in problem.configs_of_pool(p) if c.tp >= t and not c.shares_gpus]
    return sum(c.tp // t * b.n[c.index] for c in groups) <= pool.num_nodes * (pool.gpus_per_node // t)


def _pool_memory(b: pyo.Block, problem: PlacementProblem, p: int) -> object:
    shared = [c for c in problem.configs_of_pool(p) if c.shares_gpus]
    if not shared:
        return pyo.Constraint.Skip
    return sum(c.weight_gib_per_gpu * b.n[c.index] + b.kv[c.index] for c in shared) <= problem.pools[p].plannable_gib * b.g[p]


def _segment(b: pyo.Block, c: ReplicaConfig, j: int) -> object:
    a, slope = c.online.segments[j]
    return b.cap[c.index] <= a * b.n[c.index] + slope * b.kv[c.index]


def _pool_compute(b: pyo.Block, problem: PlacementProblem, p: int) -> object:
    """Replicas time-sharing a pool's g GPUs reserve compute in proportion to the SLO capacity they are given."""
    shared = [c for c in problem.configs_of_pool(p) if c.shares_gpus and c.online_rate_max > 0]
    if not shared:
        return pyo.Constraint.Skip
    cap = problem.settings.max_gpu_utilization
    return sum(b.cap[c.index] / c.online_rate_max for c in shared) <= cap * b.g[p]


def _online_balance(b: pyo.Block, problem: PlacementProblem, m: int, classes: list[int], s: int,
                    od: ReplicaConfig | None) -> object:
    """Online demand minus what is left unmet fits in the surviving capacity plus an on-demand activation."""
    wanted = [c for c in classes if (m, c) in b.MC]
    if not wanted:
        return pyo.Constraint.Skip
    top = b.model()
    served = sum(float(problem.survival[s, c.index]) * top.cap[c.index] for c in problem.configs_of_model(m))
    if m in b.MA and od is not None:
        # Activating "a share f" serves f of the demand after the delays: a fractional activation cannot serve
        # the whole demand at a fraction of the price (the LP would otherwise activate 1 % of a replica).
        demand = float(problem.demand_rps[s, m, wanted].sum())
        served = served + demand * (
            b.ah[m] * _useful(od.activate_host_s, problem) + b.ac[m] * _useful(od.activate_cold_s, problem))
    return sum(float(problem.demand_rps[s, m, c]) - b.u[m, c] for c in wanted) <= served


def _offline_balance(b: pyo.Block, problem: PlacementProblem, m: int, classes: list[int], s: int) -> object:
    """Offline work runs in the compute the online capacity leaves: throughput × (replicas − online share); beside
    online demand, within the engines' harvest budget: the harvest rate × replicas − the online capacity."""
    wanted = [c for c in classes if (m, c) in b.MC]
    if not wanted:
        return pyo.Constraint.Skip
    top = b.model()
    online = [c for c in range(len(problem.classes)) if problem.classes[c].online]
    if problem.settings.harvest_fraction is not None and float(problem.demand_rps[s, m, online].sum()) > 0:
        spare = sum(float(problem.survival[s, c.index]) * (c.harvest_rate_per_s * top.n[c.index] - top.cap[c.index])
                    for c in problem.configs_of_model(m) if c.online_rate_max > 0)
        return sum(float(problem.demand_rps[s, m, c]) - b.u[m, c] for c in wanted) <= spare
    terms = [(float(problem.survival[s, c.index]) * c.offline_rate_per_s, c) for c in problem.configs_of_model(m)
             if c.online_rate_max > 0]
    spare = sum(rate * top.n[c.index] - rate / c.online_rate_max * top.cap[c.index] for rate, c in terms)
    return sum(float(problem.demand_rps[s, m, c]) - b.u[m, c] for c in wanted) <= spare


def _useful(delay_s: float, problem: PlacementProblem) -> float:
    """Share of the horizon an on-demand replica serves after the reaction and activation delays."""
    return max(0.0, 1 - (problem.settings.reaction_s + delay_s) / problem.horizon_s)


def _spare(b: pyo.Block, problem: PlacementProblem, p: int, s: int, od: dict) -> object:
    """On-demand activations fit in the GPUs this scenario leaves: available minus the used ones that survive.

    Under uniform preemption the used GPUs survive in proportion `available / pool size`, so the constraint holds
    with no activation for any first-stage decision (the program is never infeasible).
    """
    users = [m for m in b.MA if od[m].pool_index == p]
    if not users:
        return pyo.Constraint.Skip
    top = b.model()
    pool = problem.pools[p]
    avail = float(problem.available[s, p])
    used = top.g[p] + sum(c.tp * top.n[c.index] for c in problem.configs_of_pool(p) if not c.shares_gpus)
    return sum(od[m].tp * (b.ah[m] + b.ac[m]) for m in users) + used * (avail / max(pool.num_gpus, 1)) <= avail
