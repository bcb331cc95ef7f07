"""Greedy KV-pressure placement: the program's warm start, and its answer when the solver is missing or too slow.

Models in decreasing order of demand (a high quantile over the scenarios): a model whose demand exceeds one
replica's capacity gets whole replicas, sized to the demand; a smaller one gets one time-shared TP = 1 replica with
the KV share its demand needs, on the pool where it adds the least pressure (memory and compute per GPU). The
result is expressed in the program's own variables (`PlacementDecision`), so HiGHS can start from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from optimizers.placement.problem import PlacementProblem, ReplicaConfig


@dataclass(frozen=True)
class PlacementDecision:
    """First-stage values: replicas and KV (GiB per GPU, summed over replicas) per config, shared GPUs per pool."""

    replicas: np.ndarray  # (K,) int
    kv_gib: np.ndarray  # (K,) float; TP > 1 configs: replicas × their full share
    shared_gpus: np.ndarray  # (P,) int
    host_models: frozenset[str]
    capacity_rps: np.ndarray | None = None  # (K,) SLO capacity given to each config (None: not computed)

    def gpus_used(self, problem: PlacementProblem) -> np.ndarray:
        """(P,) GPUs each pool uses: shared ones plus whole TP groups."""
        used = self.shared_gpus.astype(int).copy()
        for c in problem.configs:
            if not c.shares_gpus:
                used[c.pool_index] += c.tp * int(self.replicas[c.index])
        return used


def demand_quantile(problem: PlacementProblem, q: float = 0.9) -> np.ndarray:
    """(M,) weighted q-quantile over scenarios of each model's online requests/s."""
    online = problem.online_demand()
    order = np.argsort(online, axis=0)
    out = np.zeros(online.shape[1])
    for m in range(online.shape[1]):
        w = np.cumsum(problem.weights[order[:, m]])
        out[m] = online[order[np.searchsorted(w, q * w[-1]), m], m]
    return out


@dataclass
class _PoolUse:
    memory_gib: float = 0.0  # shared GPUs' weights + KV
    load: float = 0.0  # shared GPUs' compute shares
    whole_gpus: int = 0  # GPUs taken by TP groups

    def shared_gpus(self, usable_gib: float, max_util: float) -> int:
        return max(math.ceil(self.memory_gib / usable_gib - 1e-9), math.ceil(self.load / max_util - 1e-9))


def greedy_placement(problem: PlacementProblem, quantile: float = 0.9) -> PlacementDecision:
    """Place every model with demand, most demanded first, until inventory runs out (the rest stays unmet)."""
    demand = demand_quantile(problem, quantile)
    n = np.zeros(len(problem.configs), dtype=int)
    kv = np.zeros(len(problem.configs))
    use = [_PoolUse() for _ in problem.pools]
    for m in np.argsort(-demand, kind="stable"):
        if demand[m] <= 0:
            continue
        options = [c for c in problem.configs_of_model(int(m)) if c.online_rate_max > 0]
        best = min(((c, *_cost(problem, use, c, float(demand[m]))) for c in options), key=lambda t: t[1], default=None)
        if best is None or math.isinf(best[1]):
            continue
        c, _, count, share = best
        _take(problem, use, c, count, share, float(demand[m]))
        n[c.index] += count
        kv[c.index] += count * share
    shared = np.array([u.shared_gpus(p.plannable_gib, problem.settings.max_gpu_utilization)
                       for u, p in zip(use, problem.pools)], dtype=int)
    return PlacementDecision(n, kv, shared, frozenset())


def _size(c: ReplicaConfig, demand: float) -> tuple[int, float]:
    """Replicas and KV share per replica for `demand` req/s on config c."""
    count = max(1, math.ceil(demand / c.online_rate_max - 1e-9))
    share = c.online.kv_needed_gib(demand / count) if c.shares_gpus else c.kv_max_gib
    return count, max(share, c.kv_min_gib)


def _cost(problem: PlacementProblem, use: list[_PoolUse], c: ReplicaConfig, demand: float) -> tuple[float, int, float]:
    """GPUs the pool would need after adding the replicas (inf when they do not fit), with the sizing."""
    pool = problem.pools[c.pool_index]
    count, share = _size(c, demand)
    u = use[c.pool_index]
    max_util = problem.settings.max_gpu_utilization
    if c.shares_gpus:
        after = _PoolUse(u.memory_gib + count * (c.weight_gib_per_gpu + share),
                         u.load + demand / c.online_rate_max, u.whole_gpus)
    else:
        after = _PoolUse(u.memory_gib, u.load, u.whole_gpus + count * c.tp)
    needed = after.whole_gpus + after.shared_gpus(pool.plannable_gib, max_util)
    if needed > pool.num_gpus:
        return math.inf, count, share
    before = u.whole_gpus + u.shared_gpus(pool.plannable_gib, max_util)
    return (needed - before) * pool.price_per_hour + needed / max(pool.num_gpus, 1) * 1e-3, count, share


def _take(problem: PlacementProblem, use: list[_PoolUse], c: ReplicaConfig, count: int, share: float,
          demand: float) -> None:
    u = use[c.pool_index]
    if c.shares_gpus:
        u.memory_gib += count * (c.weight_gib_per_gpu + share)
        u.load += demand / c.online_rate_max
    else:
        u.whole_gpus += count * c.tp


def current_decision(problem: PlacementProblem) -> PlacementDecision:
    """The current placement in the program's variables (the warm start when one runs)."""
    cur = problem.current
    memory = np.zeros(len(problem.pools))
    whole = np.zeros(len(problem.pools), dtype=int)
    for c in problem.configs:
        if c.shares_gpus:
            memory[c.pool_index] += c.weight_gib_per_gpu * cur.replicas[c.index] + cur.kv_gib[c.index]
        else:
            whole[c.pool_index] += c.tp * cur.replicas[c.index]
    shared = np.array([min(math.ceil(memory[p] / pool.plannable_gib - 1e-9), pool.num_gpus - whole[p])
                       for p, pool in enumerate(problem.pools)], dtype=int)
    kv = np.array([cur.kv_gib[c.index] if c.shares_gpus else c.kv_max_gib * cur.replicas[c.index]
                   for c in problem.configs])
    return PlacementDecision(cur.replicas.copy(), kv, np.maximum(shared, 0), problem.current.host_models)
