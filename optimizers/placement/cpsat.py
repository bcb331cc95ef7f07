"""CP-SAT packing of shared (TP = 1) replicas onto GPUs: fewest replicas dropped, then fewest KV shares shrunk,
then fewest GPUs, then fewest moves of running replicas.

Per pool, bin packing with two capacities — memory (MiB) and compute share (thousandths of a GPU) — where each
replica may take its planned KV share or be shrunk to its minimum (one max-context sequence), one replica of a
model per GPU, and GPUs opened in order (symmetry breaking). A replica whose load alone exceeds the utilisation cap
may still fill a GPU, but only alone (the same rule as first-fit decreasing, `packing._Pool.fits`). The first-fit
decreasing packing is given as a hint, so CP-SAT starts from it and only returns something better or equal. TP
groups are placed first by `packing.place_tp_groups`.

OR-Tools runs in the planner's process: highspy is pinned below 1.15, whose HiGHS no longer clashes with the one
OR-Tools bundles (pyproject.toml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ortools.sat.python import cp_model

from optimizers.placement.packing import (
    PackingResult,
    PlacedReplica,
    _Item,
    _Pool,
    count_gpus,
    new_pools,
    pack_shared_ffd,
    place_tp_groups,
    placed,
    shrink,
)
from optimizers.placement.problem import PlacementProblem

CHUNK_ITEMS = 40  # replicas per CP-SAT model; larger pools are packed in independent chunks (docs/optimizers.md)
_MIB_PER_GIB = 1024
_LOAD_SCALE = 1000


@dataclass(frozen=True)
class _Bins:
    """The GPUs one pool's shared replicas may use, with their free memory (MiB) and compute (thousandths)."""

    gpu_ids: tuple[str, ...]
    memory_mib: tuple[int, ...]
    load: tuple[int, ...]
    num_current: int  # the first bins are GPUs replicas run on now; the others are interchangeable
    hinted_count: tuple[int, ...]  # replicas the first-fit hint puts on each


def pack_cpsat(problem: PlacementProblem, items: list[_Item], gpu_ids: dict[str, list[str]], *,
               time_limit_s: float = 1.0) -> PackingResult:
    """Place items on the pools' healthy GPUs: TP groups as `pack_ffd` does, shared replicas by CP-SAT per pool,
    in chunks of at most `CHUNK_ITEMS` replicas (module docstring); within `time_limit_s` of solver time."""
    pools = new_pools(problem, gpu_ids)
    out: list[PlacedReplica] = []
    dropped: list[str] = []
    place_tp_groups(problem, items, pools, out, dropped)
    work = []
    for p in sorted({i.config.pool_index for i in items if i.config.shares_gpus}):
        mine = [i for i in items if i.config.shares_gpus and i.config.pool_index == p]
        hint = _ffd_hint(mine, pools[p])
        work += [(p, [mine[i] for i in idx], {j: hint[i] for j, i in enumerate(idx) if i in hint}, gpus)
                 for idx, gpus in _chunks(pools[p], mine, hint)]
    num_shrunk = 0
    for p, chunk, hint, gpus in work:
        placed_here, lost = solve_pool(chunk, _bins(pools[p], gpus, chunk, hint), hint, time_limit_s / len(work),
                                       deterministic=problem.settings.deterministic)
        wanted = {(i.config.index, i.replica_id): i.kv_share_gib for i in chunk}  # a config's new replicas share alike
        out += [placed(problem, item, (g,), wanted_kv_gib=wanted[(item.config.index, item.replica_id)])
                for item, g, _ in placed_here]
        num_shrunk += sum(shrunk for _, _, shrunk in placed_here)
        dropped += [f"{i.config.model}: no GPU of {problem.pools[p].name} has room (CP-SAT)" for i in lost]
    return PackingResult(tuple(out), tuple(dropped), "cp-sat", count_gpus(out), num_shrunk)


def _chunks(pool: _Pool, items: list[_Item], hint: dict[int, tuple[str, bool]]) -> list[tuple[list[int], list[str]]]:
    """Split a pool's packing into independent pieces: the GPUs the first-fit hint opens, dealt round-robin from the
    fullest to the emptiest (so each piece holds some nearly empty GPUs to consolidate), each with the replicas the
    hint put there; replicas the hint could not place are dealt out too, each with one more free GPU."""
    num = max(1, math.ceil(len(items) / CHUNK_ITEMS))
    on: dict[str, list[int]] = {}
    for i, (gpu, _) in hint.items():
        on.setdefault(gpu, []).append(i)
    by_fill = sorted(on, key=lambda g: (pool.memory[g], g))
    spare = [g for g in pool.gpu_ids if pool.is_free(g) and g not in on]
    left = [i for i in range(len(items)) if i not in hint]
    out: list[tuple[list[int], list[str]]] = [([], []) for _ in range(num)]
    for n, gpu in enumerate(by_fill):
        out[n % num][0].extend(on[gpu])
        out[n % num][1].append(gpu)
    for n, i in enumerate(left):
        out[n % num][0].append(i)
        if n < len(spare):
            out[n % num][1].append(spare[n])
    return [(idx, gpus) for idx, gpus in out if idx]


def _bins(pool: _Pool, gpus: list[str], items: list[_Item], hint: dict[int, tuple[str, bool]]) -> _Bins:
    """The chunk's GPUs as bins: those some replica runs on now first (not ordered: moves make them differ), then
    the interchangeable ones in the hint's order."""
    current = {i.current[0] for i in items if i.current}
    gpus = [g for g in gpus if g in current] + [g for g in gpus if g not in current]
    return _Bins(tuple(gpus), tuple(int(pool.memory[g] * _MIB_PER_GIB) for g in gpus),
                 tuple(round(pool.load[g] * _LOAD_SCALE) for g in gpus), sum(1 for g in gpus if g in current),
                 tuple(sum(1 for gpu, _ in hint.values() if gpu == g) for g in gpus))


def _ffd_hint(items: list[_Item], pool: _Pool) -> dict[int, tuple[str, bool]]:
    """Item index → (GPU, shrunk) in the first-fit decreasing packing of the same items on a copy of the pool."""
    return {index: (gpu, item is not items[index]) for index, gpu, item in pack_shared_ffd(items, pool.copy())}


def solve_pool(items: list[_Item], bins: _Bins, hint: dict[int, tuple[str, bool]],
               time_limit_s: float, *, deterministic: bool = False) -> tuple[list[tuple[_Item, str, bool]], list[_Item]]:
    """Pack one pool's shared items on the bins (module docstring); returns (item as placed, GPU, shrunk) for each
    item placed, and the items left out. Never worse than the hint: when CP-SAT finds nothing in time, the hint is
    the answer. `deterministic` spends `time_limit_s` of CP-SAT's deterministic time (work, not wall-clock: the
    same packing on a busy machine) with ten times the wall-clock time as a safety net."""
    if not bins.gpu_ids or not items:
        return [], list(items)
    m, x = _build(items, bins, hint)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(time_limit_s, 0.05) * (10 if deterministic else 1)
    if deterministic:
        solver.parameters.max_deterministic_time = max(time_limit_s, 0.05)
    solver.parameters.num_workers = 1  # deterministic, and the planner's other stages share the cores
    solver.parameters.random_seed = 0
    chosen = hint
    if solver.solve(m) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        found = {i: (bins.gpu_ids[b], bool(v)) for (i, b, v), var in x.items() if solver.value(var)}
        # The hint may be rejected (memory is rounded down to MiB here), so compare rather than trust.
        if _rank(found, items) < _rank(hint, items):
            chosen = found
    result = [(shrink(item) if chosen[i][1] else item, chosen[i][0], chosen[i][1])
              for i, item in enumerate(items) if i in chosen]
    return result, [item for i, item in enumerate(items) if i not in chosen]


def _build(items: list[_Item], bins: _Bins, hint: dict[int, tuple[str, bool]]) -> tuple[cp_model.CpModel, dict]:
    """The CP-SAT model of one pool and its variables x[i, b, v]: item i on bin b with its planned KV share
    (v = 0) or shrunk to the minimum (v = 1)."""
    m = cp_model.CpModel()
    num_bins = len(bins.gpu_ids)
    variants = [(item, shrink(item)) for item in items]
    x = {(i, b, v): m.new_bool_var(f"x{i}_{b}_{v}") for i in range(len(items)) for b in range(num_bins)
         for v in (0, 1)}
    used = [m.new_bool_var(f"u{b}") for b in range(num_bins)]
    on = {(i, b): x[i, b, 0] + x[i, b, 1] for i in range(len(items)) for b in range(num_bins)}
    for i in range(len(items)):
        m.add(sum(on[i, b] for b in range(num_bins)) <= 1)
    for b in range(num_bins):
        _bin_constraints(m, b, items, variants, bins, x, on, used[b])
        if b > bins.num_current:
            m.add(used[b] <= used[b - 1])
    num_placed = sum(on[i, b] for i in range(len(items)) for b in range(num_bins))
    moves = sum(1 - on[i, bins.gpu_ids.index(it.current[0])] for i, it in enumerate(items)
                if it.current and it.current[0] in bins.gpu_ids)
    shrunk = sum(x[i, b, 1] for i in range(len(items)) for b in range(num_bins))
    # Lexicographic: a dropped replica outweighs every shrink, a shrink (SLO capacity the program chose, lost)
    # every GPU, a GPU every move.
    per_gpu = len(items) + 1
    per_shrink = per_gpu * (num_bins + 1)
    per_drop = per_shrink * (len(items) + 1)
    m.minimize(per_drop * (len(items) - num_placed) + per_shrink * shrunk + per_gpu * sum(used) + moves)
    _add_hint(m, hint, bins, x, used, len(items))
    return m, x


def _rank(chosen: dict[int, tuple[str, bool]], items: list[_Item]) -> tuple[int, int, int, int]:
    """The objective, lexicographically: (dropped, shrunk, GPUs, moves)."""
    moves = sum(1 for i, it in enumerate(items) if it.current and chosen.get(i, ("",))[0] != it.current[0])
    return (len(items) - len(chosen), sum(small for _, small in chosen.values()),
            len({g for g, _ in chosen.values()}), moves)


def _add_hint(m: cp_model.CpModel, hint: dict[int, tuple[str, bool]], bins: _Bins, x: dict, used: list,
              num_items: int) -> None:
    """A complete hint (every variable), which CP-SAT's single worker can take as its first solution."""
    for i in range(num_items):
        gpu, small = hint.get(i, ("", False))
        for b, g in enumerate(bins.gpu_ids):
            for v in (0, 1):
                m.add_hint(x[i, b, v], g == gpu and v == int(small))
    opened = {gpu for gpu, _ in hint.values()}
    for b, g in enumerate(bins.gpu_ids):
        m.add_hint(used[b], g in opened)


def _bin_constraints(m: cp_model.CpModel, b: int, items: list[_Item], variants: list[tuple[_Item, _Item]],
                     bins: _Bins, x: dict, on: dict, used: cp_model.IntVar) -> None:
    """Memory and compute of one GPU, one replica per model, and the lone-replica rule for heavy loads."""
    mem = [math.ceil(it.memory_gib * _MIB_PER_GIB) for pair in variants for it in pair]
    load = [round(it.load_share * _LOAD_SCALE) for pair in variants for it in pair]
    terms = [(x[i, b, v], 2 * i + v) for i in range(len(items)) for v in (0, 1)]
    m.add(sum(mem[j] * var for var, j in terms) <= bins.memory_mib[b] * used)
    m.add(sum(min(load[j], bins.load[b]) * var for var, j in terms) <= bins.load[b] * used)
    for model in {it.config.model for it in items}:
        same = [on[i, b] for i, it in enumerate(items) if it.config.model == model]
        if len(same) > 1:
            m.add(sum(same) <= 1)
    heavy = [(x[i, b, v]) for i in range(len(items)) for v in (0, 1) if load[2 * i + v] > bins.load[b]]
    if heavy and len(items) > 1:
        count = m.new_int_var(0, len(items), f"n{b}")
        m.add(count == sum(on[i, b] for i in range(len(items))))
        m.add_hint(count, bins.hinted_count[b])
        for var in heavy:
            m.add(count <= 1).only_enforce_if(var)
