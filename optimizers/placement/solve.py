"""Solve the placement program with HiGHS (compiled once to matrices), within a time limit and warm-started.

Solving is separate from building (`placement.model`). Large fleets are decomposed into blocks of models, each
given the share of every pool its demand calls for (`solve_placement`); blocks are independent programs, so time
grows linearly with the number of models instead of with the size of one branch-and-bound tree.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pyomo.environ as pyo

from optimizers.placement.greedy import PlacementDecision, current_decision, demand_quantile, greedy_placement
from optimizers.placement.highs import CompiledProgram, Solution
from optimizers.placement.model import build_model, useful_capacity
from optimizers.placement.problem import CurrentPlacement, PlacementProblem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacementResult:
    """A first-stage decision with the recourse it implies per scenario and how the solver got there."""

    decision: PlacementDecision
    served_rps: np.ndarray  # (S, K) online requests/s served per config
    unmet_rps: np.ndarray  # (S, M, C) requests/s left unserved within SLO
    objective_usd: float
    status: str  # optimal | time_limit | heuristic | …
    gap: float | None
    time_s: float
    num_variables: int
    num_constraints: int
    warm_start: str
    num_blocks: int = 1


def solver_available() -> bool:
    """HiGHS is importable (highspy); without it the planner uses the greedy placement."""
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


def solve_block(problem: PlacementProblem, *, time_limit_s: float, warm: PlacementDecision | None = None,
                warm_name: str = "greedy") -> PlacementResult:
    """Build, compile and solve one program within `time_limit_s`, anytime:

    1. the LP relaxation (the lower bound, and the guide for rounding);
    2. candidates with the replica counts fixed — the LP rounded model by model (`round_counts`) and the warm
       start — each completed by a small MIP over the shared GPUs and residencies; the best is the incumbent;
    3. the LP's neighbourhood (RENS): a sub-MIP whose replica counts may only take the floor or ceiling of the LP
       value (or the incumbent's), solved from the incumbent — small, so it usually finishes within the budget;
    4. the full MIP from the best solution, when at least `settings.min_full_mip_s` is left — or whatever is left
       (deterministic solves included) on a program of at most `settings.small_mip_integers` integers whose
       incumbent leaves more online demand unserved than the relaxation (`settings.short_of_lp_rps`).
    The result is never worse than the warm start; `gap` is measured against the LP bound.
    """
    start = time.perf_counter()
    st = problem.settings
    nodes = _node_limit(problem)
    if st.deterministic:  # every phase runs, MIPs stop on nodes; the time limit is only a safety net
        left = lambda: _safety_s(time_limit_s)
    else:  # 5 % of the budget is kept for reading the solution back into the model and scoring it
        left = lambda: 0.95 * time_limit_s - (time.perf_counter() - start)
    warm = warm if warm is not None else greedy_placement(problem)
    model = build_model(problem)
    prog = CompiledProgram(model)
    n_cols = np.array([prog.index(model.n[k]) for k in model.K])
    lp = prog.solve(time_limit_s=max(left(), 0.05), integer=False)
    tries = [(warm_name, warm.replicas)]
    if lp.values is not None:
        cap_cols = np.array([prog.index(model.cap[k]) for k in model.K])
        tries.insert(0, ("lp-rounding", round_counts(problem, lp.values[n_cols], lp.values[cap_cols])))
    best, source = _best_completion(prog, n_cols, tries, left, nodes)
    if best is not None and lp.values is not None and left() > 0.05:
        rens = prog.solve(time_limit_s=left(), mip_gap=problem.settings.mip_gap / 2, start=best.values,
                          max_nodes=nodes, **_neighbourhood(prog, n_cols, lp.values, best.values))
        if rens.objective is not None and rens.objective < best.objective - 1e-9:
            best, source = rens, "lp-neighbourhood"
    # Deterministic solves stop here, as a rule: HiGHS has no work limit on a MIP's root (cuts, heuristics), which
    # took 0.4-3 s on 12-model instances, so a full MIP can only be limited by time. The exception is a small
    # program whose incumbent leaves online demand unserved that the relaxation serves (`_short_of_lp`): its root
    # takes milliseconds, and service is at stake, so it gets the full MIP in every mode, within what is left.
    integers = int(prog.integer.sum())
    rescue = best is not None and integers <= st.small_mip_integers and left() > 0.05 \
        and _short_of_lp(problem, model, prog, best, lp) > st.short_of_lp_rps
    if best is not None and (rescue or not st.deterministic and left() >= st.min_full_mip_s
                             and integers <= st.max_mip_integers):
        mip = prog.solve(time_limit_s=left(), mip_gap=problem.settings.mip_gap, start=best.values, max_nodes=nodes)
        if mip.objective is not None and mip.objective < best.objective - 1e-9:
            best, source = mip, "mip"
    if best is None:  # nothing feasible in time: the warm start, scored exactly
        return evaluate(problem, warm, status="heuristic", time_s=time.perf_counter() - start, warm_start=warm_name)
    prog.load(best.values)
    bound = lp.objective if lp.objective is not None else None
    gap = abs(best.objective - bound) / max(abs(best.objective), 1e-9) if bound is not None else None
    status = "optimal" if gap is not None and gap <= problem.settings.mip_gap else "feasible"
    return _extract(model, problem, status, gap, time.perf_counter() - start, (prog.num_columns, prog.num_rows),
                    f"{warm_name}; best from {source}", float(best.objective))


def _short_of_lp(problem: PlacementProblem, model: pyo.ConcreteModel, prog: CompiledProgram, best: Solution,
                 lp: Solution) -> float:
    """Expected online req/s the incumbent leaves unserved beyond what the LP relaxation leaves (0 without an LP):
    rounding that starves a model the fleet could serve."""
    if lp.values is None:
        return 0.0
    online = problem.online_mask
    cols, weights = [], []
    for s in model.S:
        block = model.scenario[s]
        for m, c in block.MC:
            if online[c]:
                cols.append(prog.index(block.u[m, c]))
                weights.append(float(problem.weights[s]))
    if not cols:
        return 0.0
    w, idx = np.array(weights), np.array(cols)
    return float(w @ best.values[idx] - w @ lp.values[idx])


def _node_limit(problem: PlacementProblem) -> int | None:
    return problem.settings.deterministic_mip_nodes if problem.settings.deterministic else None


def _safety_s(time_limit_s: float) -> float:
    """The time limit of a deterministic solve: far above what its work limits take, so it never binds."""
    return max(10 * time_limit_s, 10.0)


def _best_completion(prog: CompiledProgram, n_cols: np.ndarray, tries: list[tuple[str, np.ndarray]],
                     left, max_nodes: int | None = None) -> tuple[Solution | None, str]:
    """The best of the candidate replica counts, each completed by `_with_counts`."""
    best: Solution | None = None
    source = tries[-1][0]
    for name, counts in tries:
        cand = _with_counts(prog, n_cols, counts, max(left(), 0.05), max_nodes)
        if cand.objective is not None and (best is None or cand.objective < best.objective - 1e-9):
            best, source = cand, name
    return best, source


def _neighbourhood(prog: CompiledProgram, n_cols: np.ndarray, relaxed: np.ndarray,
                   incumbent: np.ndarray) -> dict[str, np.ndarray]:
    """Column bounds of the RENS sub-MIP: replica counts between the floor and the ceiling of their LP value,
    widened to the incumbent's value so the incumbent stays feasible; every other column keeps its bounds."""
    lower, upper = prog.lower.copy(), prog.upper.copy()
    valid = n_cols[n_cols >= 0]
    inc = np.round(incumbent[valid])
    lower[valid] = np.maximum(lower[valid], np.minimum(np.floor(relaxed[valid] + 1e-6), inc))
    upper[valid] = np.minimum(upper[valid], np.maximum(np.ceil(relaxed[valid] - 1e-6), inc))
    return {"lower": lower, "upper": upper}


def round_counts(problem: PlacementProblem, relaxed_n: np.ndarray, relaxed_cap: np.ndarray) -> np.ndarray:
    """Integer replica counts from the LP relaxation, model by model.

    The LP buys whole replicas where a model needs them and fractions of replicas for the rest of its demand (5.7
    TP-2 groups here, 0.4 of a shared replica there). Each model keeps the whole replicas (the floors), and the
    capacity the fractions carried is covered again, replica by replica: by one time-shared TP = 1 replica when one
    can carry the rest (a small KV share on a shared GPU is the cheapest top-up; in the pool where the LP put most
    of the model), else by rounding up the config with the largest fraction left. Inventory is then repaired
    (`repair_inventory`), undoing roundings first.
    """
    useful = useful_capacity(problem)
    counts = np.floor(relaxed_n + 1e-6)
    for m in range(len(problem.models)):
        configs = [c for c in problem.configs_of_model(m) if useful[c.index] > 0]
        need = sum(relaxed_cap[c.index] for c in configs)
        while configs and (rest := need - sum(min(relaxed_cap[c.index], counts[c.index] * useful[c.index])
                                              for c in configs)) > 0.02 * need:
            shared = [c for c in configs if c.shares_gpus and useful[c.index] >= rest - 1e-9]
            if shared:
                counts[max(shared, key=lambda c: (relaxed_n[c.index] + relaxed_cap[c.index] / useful[c.index],
                                                  -c.weight_gib_per_gpu)).index] += 1
                break
            short = [c for c in configs if relaxed_n[c.index] - counts[c.index] > 1e-6]
            if not short:
                break
            counts[max(short, key=lambda c: relaxed_n[c.index] - counts[c.index]).index] += 1
    return repair_inventory(problem, counts.astype(int), relaxed_n)


def repair_inventory(problem: PlacementProblem, counts: np.ndarray, relaxed_n: np.ndarray | None = None) -> np.ndarray:
    """Make counts fit every pool: move replicas of an over-full pool to a pool with room (the same TP degree if
    possible, else the config with the most capacity there), else take one away there (its demand then shows as unmet, priced) — the one rounded furthest above the LP's count
    when `relaxed_n` is given (undo the rounding first), else the one of the least loaded model."""
    counts = counts.copy()
    excess = counts - relaxed_n if relaxed_n is not None else np.zeros(len(counts))
    while (over := _overfull_pool(problem, counts)) is not None:
        here = [c for c in problem.configs_of_pool(over) if counts[c.index] > 0]
        victim = min(here, key=lambda c: (-round(excess[c.index], 6), counts[c.index] * c.online_rate_max, c.index))
        excess[victim.index] -= 1
        counts[victim.index] -= 1
        alternatives = sorted((c for c in problem.configs_of_model(victim.model_index)
                               if c.pool_index != over and c.online_rate_max > 0),
                              key=lambda c: (c.tp != victim.tp, -c.online_rate_max))
        for alt in alternatives:
            counts[alt.index] += 1
            if _overfull_pool(problem, counts) in (None, over):
                break
            counts[alt.index] -= 1
    return counts


def _overfull_pool(problem: PlacementProblem, counts: np.ndarray) -> int | None:
    """A pool whose whole TP groups plus the GPUs its shared replicas need (by memory) exceed its GPUs."""
    for p, pool in enumerate(problem.pools):
        whole = sum(c.tp * counts[c.index] for c in problem.configs_of_pool(p) if not c.shares_gpus)
        memory = sum((c.weight_gib_per_gpu + c.kv_min_gib) * counts[c.index]
                     for c in problem.configs_of_pool(p) if c.shares_gpus)
        if whole + math.ceil(memory / pool.plannable_gib - 1e-9) > pool.num_gpus:
            return p
    return None


def _with_counts(prog: CompiledProgram, n_cols: np.ndarray, counts: np.ndarray, time_limit_s: float,
                 max_nodes: int | None = None) -> Solution:
    """Complete fixed replica counts: a small MIP over shared GPUs and residencies, KV and capacity continuous."""
    lower, upper = prog.lower.copy(), prog.upper.copy()
    valid = n_cols >= 0
    fixed = np.clip(counts[valid], lower[n_cols[valid]], upper[n_cols[valid]])
    lower[n_cols[valid]] = upper[n_cols[valid]] = fixed
    return prog.solve(time_limit_s=time_limit_s, lower=lower, upper=upper, mip_gap=1e-4, max_nodes=max_nodes)


def solve_placement(problem: PlacementProblem, *, time_limit_s: float | None = None) -> PlacementResult:
    """Solve the whole problem, in blocks of at most `settings.max_models_per_block` models with demand."""
    limit = problem.settings.time_limit_s if time_limit_s is None else time_limit_s
    blocks = model_blocks(problem)
    warm_name = "current" if problem.current.replicas.any() else "greedy"
    if len(blocks) == 1:
        warm = current_decision(problem) if warm_name == "current" else None
        return solve_block(problem, time_limit_s=limit, warm=warm, warm_name=warm_name)
    start = time.perf_counter()
    parts = []
    for i, (models, pool_gpus) in enumerate(blocks):
        sub, index = restrict(problem, models, pool_gpus)
        remaining = limit * (len(blocks) - i) / len(blocks) if problem.settings.deterministic else \
            limit - (time.perf_counter() - start)
        parts.append((solve_block(sub, time_limit_s=remaining / (len(blocks) - i)), models, index))
    return _merge(problem, parts, time.perf_counter() - start, warm_name)


def model_blocks(problem: PlacementProblem) -> list[tuple[list[int], np.ndarray]]:
    """Split models into blocks of similar demand and give each block pool GPUs in proportion to its need.

    Models are dealt round-robin in order of demand so every block gets a few heavy and many light models; a
    block's share of each pool is its share of the fleet's GPU need (greedy sizing), at least one GPU.
    """
    demand = demand_quantile(problem)
    active = [int(m) for m in np.argsort(-demand, kind="stable") if demand[m] > 0 or problem.demand_rps[:, m].any()]
    size = problem.settings.max_models_per_block
    if len(active) <= size:
        return [(list(range(len(problem.models))), np.array([p.num_gpus for p in problem.pools]))]
    num = math.ceil(len(active) / size)
    groups = [sorted(active[i::num]) for i in range(num)]
    need = np.array([[_gpu_need(problem, g, p) for p in range(len(problem.pools))] for g in groups]) + 1e-9
    total = np.array([p.num_gpus for p in problem.pools])
    shares = np.floor(need / need.sum(axis=0) * total).astype(int)
    shares[np.argmax(need, axis=0), range(len(total))] += total - shares.sum(axis=0)  # remainder to the neediest
    return list(zip(groups, shares))


def _gpu_need(problem: PlacementProblem, models: list[int], p: int) -> float:
    demand = demand_quantile(problem)
    rates = [max((c.online_rate_max for c in problem.configs_of_model(m) if c.pool_index == p), default=0.0)
             for m in models]
    return sum(demand[m] / r for m, r in zip(models, rates) if r > 0)


def restrict(problem: PlacementProblem, models: list[int], pool_gpus: np.ndarray) -> tuple[PlacementProblem, list[int]]:
    """The sub-problem of `models` on `pool_gpus` GPUs per pool; returns it and its configs' indices in `problem`."""
    keep = [c for c in problem.configs if c.model_index in set(models)]
    pos = {m: i for i, m in enumerate(models)}
    configs = tuple(replace(c, index=i, model_index=pos[c.model_index]) for i, c in enumerate(keep))
    pools = tuple(replace(p, num_gpus=int(n)) for p, n in zip(problem.pools, pool_gpus))
    idx = [c.index for c in keep]
    frac = np.divide(pool_gpus, [max(p.num_gpus, 1) for p in problem.pools])
    cur = CurrentPlacement(problem.current.replicas[idx], problem.current.kv_gib[idx], problem.current.host_models)
    sub = replace(problem, models=tuple(problem.models[m] for m in models), pools=pools, configs=configs,
                  demand_rps=problem.demand_rps[:, models], survival=problem.survival[:, idx],
                  available=problem.available * frac, current=cur,
                  mean_output_tokens=problem.mean_output_tokens[models],
                  settings=replace(problem.settings, host_cache_gib=problem.settings.host_cache_gib * len(models)
                                   / len(problem.models)))
    return sub, idx


def evaluate(problem: PlacementProblem, decision: PlacementDecision, *, status: str, time_s: float = 0.0,
             warm_start: str = "") -> PlacementResult:
    """Score fixed replica counts (e.g. a heuristic's or a baseline's) by solving only what they leave open."""
    model = build_model(problem)
    prog = CompiledProgram(model)
    n_cols = np.array([prog.index(model.n[k]) for k in model.K])
    sol = _with_counts(prog, n_cols, decision.replicas.astype(float), 60.0)
    if sol.values is None:
        raise RuntimeError(f"placement evaluation found no solution ({sol.status})")
    prog.load(sol.values)
    return _extract(model, problem, status, None, time_s, (prog.num_columns, prog.num_rows), warm_start,
                    float(sol.objective))


def packed_objective(problem: PlacementProblem, counts: np.ndarray, kv_gib: np.ndarray, shared_gpus: np.ndarray,
                     *, time_limit_s: float = 1.0) -> float:
    """The program's expected cost (USD) of what a packing delivers: replica counts and shared GPUs fixed to what
    it placed, each config's KV at most what its replicas got (the rest — capacity, residencies, each scenario's
    recourse — optimised). Packing may cut KV shares the program counted on; this prices the cut as the program
    prices everything, so packings of different solves compare on one scale (`FleetwisePlanner._place`).
    Infinite when the fixed values admit no solution in time."""
    model = build_model(problem)
    prog = CompiledProgram(model)
    lower, upper = prog.lower.copy(), prog.upper.copy()

    def fix(var, lo: float, hi: float) -> None:
        if (col := prog.index(var)) is not None:
            lower[col], upper[col] = max(lower[col], lo), min(upper[col], hi)

    for k in model.K:
        fix(model.n[k], float(counts[k]), float(counts[k]))
    for k in model.K1:
        fix(model.kv[k], 0.0, float(kv_gib[k]) + 1e-6)
    for p in model.P:
        fix(model.g[p], float(shared_gpus[p]), float(shared_gpus[p]))
    if (lower > upper).any():
        return math.inf
    if problem.settings.deterministic:
        time_limit_s = _safety_s(time_limit_s)
    sol = prog.solve(time_limit_s=time_limit_s, lower=lower, upper=upper, mip_gap=1e-4, max_nodes=_node_limit(problem))
    return math.inf if sol.objective is None else float(sol.objective)


def _extract(model: pyo.ConcreteModel, problem: PlacementProblem, status: str, gap: float | None, time_s: float,
             sizes: tuple[int, int], warm: str, objective: float) -> PlacementResult:
    """Read the decision from the model; split each scenario's served load over configs by surviving capacity."""
    val = lambda v: float(v.value or 0.0)
    n = np.array([round(val(model.n[k])) for k in model.K], dtype=int)
    kv = np.array([val(model.kv[c.index]) if c.shares_gpus else c.kv_max_gib * n[c.index] for c in problem.configs])
    cap = np.array([val(model.cap[k]) for k in model.K])
    g = np.array([round(val(model.g[p])) for p in model.P], dtype=int)
    host = frozenset(problem.models[m].name for m in model.M if val(model.h[m]) > 0.5)
    unmet = np.zeros_like(problem.demand_rps)
    for s in model.S:
        for m, c in model.scenario[s].MC:
            unmet[s, m, c] = val(model.scenario[s].u[m, c])
    served = _served_by_config(problem, cap, unmet)
    return PlacementResult(PlacementDecision(n, kv, g, host, cap), served, unmet, objective, status, gap, time_s,
                           sizes[0], sizes[1], warm)


def _served_by_config(problem: PlacementProblem, cap: np.ndarray, unmet: np.ndarray) -> np.ndarray:
    """(S, K) online req/s per config: each model's served load in proportion to its configs' surviving capacity."""
    served_model = (problem.demand_rps - unmet)[:, :, problem.online_mask].sum(axis=2)  # (S, M)
    live = problem.survival * cap[None, :]  # (S, K)
    out = np.zeros_like(live)
    for m in range(len(problem.models)):
        idx = [c.index for c in problem.configs_of_model(m)]
        total = live[:, idx].sum(axis=1, keepdims=True)
        share = np.divide(live[:, idx], total, out=np.zeros_like(live[:, idx]), where=total > 0)
        out[:, idx] = share * np.minimum(served_model[:, [m]], total)
    return out


def _merge(problem: PlacementProblem, parts: list, time_s: float, warm: str) -> PlacementResult:
    """Combine block results into one result over the whole problem's configs and models."""
    k, s = len(problem.configs), problem.num_scenarios
    n, kv, cap = np.zeros(k, dtype=int), np.zeros(k), np.zeros(k)
    served, unmet = np.zeros((s, k)), np.zeros_like(problem.demand_rps)
    shared = np.zeros(len(problem.pools), dtype=int)
    host: set[str] = set()
    for res, models, index in parts:
        n[index] = res.decision.replicas
        kv[index] = res.decision.kv_gib
        cap[index] = res.decision.capacity_rps
        served[:, index] = res.served_rps
        unmet[:, models] = res.unmet_rps
        shared += res.decision.shared_gpus
        host |= res.decision.host_models
    statuses = [res.status for res, _, _ in parts]
    status = next(s for s in ("heuristic", "feasible", "time_limit", "optimal") if s in statuses)
    gaps = [res.gap for res, _, _ in parts if res.gap is not None]
    return PlacementResult(
        PlacementDecision(n, kv, shared, frozenset(host), cap), served, unmet,
        sum(res.objective_usd for res, _, _ in parts), status, max(gaps) if gaps else None, time_s,
        sum(res.num_variables for res, _, _ in parts), sum(res.num_constraints for res, _, _ in parts), warm,
        num_blocks=len(parts))

