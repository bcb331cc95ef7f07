"""CP-SAT packing of shared (TP = 1) replicas onto GPUs: fewest GPUs, then fewest moves of running replicas.

Bin packing with two capacities (memory in MiB, compute share in thousandths), one replica of a model per GPU,
symmetry broken by opening GPUs in order. A replica that fits nowhere is dropped at a price larger than any GPU, so
the model is always feasible. TP groups are placed first by `packing.place_tp_groups`.

OR-Tools and highspy each bundle a HiGHS build whose symbols clash when both load into one process, so CP-SAT runs
in a separate (spawned, reused) worker process; the planner's process keeps HiGHS.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from optimizers.placement.packing import (
    PackingResult, PlacedReplica, _count_gpus, _Item, new_pools, place_tp_groups, placed, shrink,
)
from optimizers.placement.problem import PlacementProblem

_MIB_PER_GIB = 1024
_LOAD_SCALE = 1000


def pack_cpsat(problem: PlacementProblem, items: list[_Item], gpu_ids: dict[str, list[str]], *,
               time_limit_s: float = 1.0) -> PackingResult:
    pools = new_pools(problem, gpu_ids)
    out: list[PlacedReplica] = []
    dropped: list[str] = []
    place_tp_groups(problem, items, pools, out, dropped)
    for p, pool in pools.items():
        mine = [i for i in items if i.config.shares_gpus and i.config.pool_index == p]
        if not mine:
            continue
        free = [g for g in pool.gpu_ids if pool.is_free(g)]
        placed_here, lost = _worker().submit(_solve_pool, mine, free, pool.memory, pool.load,
                                             time_limit_s / max(len(pools), 1)).result()
        out += [placed(problem, item, (g,)) for item, g in placed_here]
        dropped += [f"{i.config.model}: no GPU of {problem.pools[p].name} has room (CP-SAT)" for i in lost]
    return PackingResult(tuple(out), tuple(dropped), "cp-sat", _count_gpus(out))


_EXECUTOR: ProcessPoolExecutor | None = None


def _worker() -> ProcessPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_load_ortools)
    return _EXECUTOR


def _load_ortools() -> None:
    """Load OR-Tools before anything pulls in scipy.optimize's HiGHS (unpickling the items does)."""
    from ortools.sat.python import cp_model  # noqa: F401


def _solve_pool(items: list[_Item], gpus: list[str], memory: dict[str, float], load: dict[str, float],
                time_limit_s: float) -> tuple[list[tuple[_Item, str]], list[_Item]]:
    """Pack one pool's shared items on its free GPUs; items are shrunk to their minimum KV when that helps."""
    from ortools.sat.python import cp_model

    need = sum(i.memory_gib for i in items)
    bins = gpus[: min(len(gpus), max(1, math.ceil(need / max(memory[gpus[0]], 1e-9)) * 2 + 2))] if gpus else []
    if not bins:
        return [], items
    m = cp_model.CpModel()
    x = {(i, b): m.new_bool_var(f"x{i}_{b}") for i in range(len(items)) for b in range(len(bins))}
    small = {i: m.new_bool_var(f"s{i}") for i in range(len(items))}  # shrink to the minimum KV share
    used = [m.new_bool_var(f"u{b}") for b in range(len(bins))]
    for i, item in enumerate(items):
        m.add(sum(x[i, b] for b in range(len(bins))) <= 1)
    for b, g in enumerate(bins):
        mem_cap, load_cap = int(memory[g] * _MIB_PER_GIB), int(load[g] * _LOAD_SCALE)
        mem = []
        for i, item in enumerate(items):
            big, low = int(item.memory_gib * _MIB_PER_GIB), int(shrink(item).memory_gib * _MIB_PER_GIB)
            z = m.new_bool_var("")  # x ∧ small
            m.add_implication(z, x[i, b])
            m.add_implication(z, small[i])
            m.add_bool_or([x[i, b].Not(), small[i].Not(), z])
            mem.append(big * x[i, b] - (big - low) * z)
        m.add(sum(mem) <= mem_cap * used[b])
        m.add(sum(int(item.load_share * _LOAD_SCALE) * x[i, b] for i, item in enumerate(items)) <= load_cap * used[b])
        for model in {item.config.model for item in items}:
            same = [x[i, b] for i, item in enumerate(items) if item.config.model == model]
            if len(same) > 1:
                m.add(sum(same) <= 1)
        if b:
            m.add(used[b] <= used[b - 1])
    placed_any = [sum(x[i, b] for b in range(len(bins))) for i in range(len(items))]
    moves = [x[i, b].Not() for i, item in enumerate(items) for b, g in enumerate(bins) if item.current[:1] == (g,)]
    drop_price = 100 * len(bins) + 100
    m.minimize(100 * sum(used) + drop_price * sum(1 - p for p in placed_any) + sum(moves) + sum(small.values()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(time_limit_s, 0.05)
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return [], items
    result, lost = [], []
    for i, item in enumerate(items):
        b = next((b for b in range(len(bins)) if solver.value(x[i, b])), None)
        if b is None:
            lost.append(item)
        else:
            result.append((shrink(item) if solver.value(small[i]) else item, bins[b]))
    return result, lost
