"""Packing: turn per-pool replica counts into replicas on concrete GPUs and nodes.

The program decides counts per (model, pool, TP) and the GPUs a pool spends; this module chooses which GPUs.
TP groups take whole GPUs of one node (never spanning nodes), best fit by node. TP = 1 replicas are packed onto
shared GPUs under two capacities per GPU — memory (weights + KV share) and compute (the load share the program gave
them) — with one replica of a model per GPU (spreading a model's replicas is its fault tolerance). Replicas that
already run keep their GPUs when they still fit, or stay with a KV share cut by at most
`PlacementSettings.keep_in_place_kv_cut` where the new share does not (stability: a move reloads the weights and
loses the replica's KV).

Two packers: `pack_ffd` (first-fit decreasing, milliseconds) and `pack_cpsat` (OR-Tools CP-SAT, hinted with the
first-fit packing, so never worse: fewest replicas dropped, then KV shares shrunk, then GPUs, then moves). Measured
(bench/solver_scaling.py, docs/optimizers.md): at the program's KV shares CP-SAT finds no packing with fewer GPUs
than first-fit on the benchmark fleets, but where first-fit must drop a replica or shrink a KV share, CP-SAT often
fits it whole, at 0.3–2 s. So `pack(packer="auto")` runs first-fit and calls CP-SAT only to repair a packing that
dropped or shrank something, keeping whichever is better.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from core.errors import InputError
from optimizers.placement.problem import PlacementProblem, ReplicaConfig

PACKERS = ("auto", "ffd", "cpsat")
CPSAT_MIN_S = 0.2  # below this budget CP-SAT cannot even load the first-fit hint on benchmark-sized pools
_MIB = 1024


@dataclass(frozen=True)
class PlacedReplica:
    """One replica on concrete GPUs (the leader first); `kv_share_gib` is per GPU."""

    replica_id: str
    model: str
    pool: str
    gpu_type: str
    tp: int
    gpu_ids: tuple[str, ...]
    kv_share_gib: float
    memory_gib: float  # per GPU: weights + KV share
    load_share: float  # compute share of one GPU (TP = 1) the replica's SLO capacity takes
    config_index: int
    wanted_kv_gib: float = 0.0  # the share the placement asked for (more than `kv_share_gib` if packing shrank it)


@dataclass(frozen=True)
class PackingResult:
    replicas: tuple[PlacedReplica, ...]
    dropped: tuple[str, ...]  # reasons for replicas that did not fit anywhere
    packer: str
    gpus_used: int
    num_shrunk: int = 0  # shared replicas whose KV share was cut to fit anywhere (SLO capacity lost)
    num_kept_cut: int = 0  # running replicas kept on their GPU with a smaller KV share instead of moving


@dataclass(frozen=True)
class _Item:
    config: ReplicaConfig
    memory_gib: float
    load_share: float
    kv_share_gib: float
    current: tuple[str, ...] = ()  # GPUs it runs on now (a running replica being kept)
    replica_id: str = ""


def replica_items(problem: PlacementProblem, counts, kv_gib, cap_rps, current: dict[int, list[tuple[str, tuple[str, ...]]]]) -> list[_Item]:
    """Split each config's count into items; running replicas of the config come first with their ids and GPUs."""
    items = []
    for c in problem.configs:
        n = int(counts[c.index])
        if n <= 0:
            continue
        share = max(c.kv_min_gib, float(kv_gib[c.index]) / n) if c.shares_gpus else c.kv_max_gib
        rate = float(cap_rps[c.index]) / n if cap_rps is not None else c.online.rate_at(share)
        load = rate / c.online_rate_max if c.online_rate_max > 0 else 0.0
        running = current.get(c.index, [])
        for i in range(n):
            rid, gpus = running[i] if i < len(running) else ("", ())
            items.append(item_for(c, share, load, gpus, rid))
    return items


def item_for(config: ReplicaConfig, kv_share_gib: float, load_share: float, current: tuple[str, ...] = (),
             replica_id: str = "") -> _Item:
    """One replica of `config` to pack (TP groups hold all the memory the weights leave); `current` are the GPUs it
    runs on now, if any, and `replica_id` its id there."""
    share = kv_share_gib if config.shares_gpus else config.kv_max_gib
    return _Item(config, config.weight_gib_per_gpu + share, load_share, share, current, replica_id)


class _Pool:
    """Free capacity of one pool's GPUs while packing."""

    def __init__(self, gpu_ids: list[str], gpus_per_node: int, usable_gib: float, max_load: float,
                 keep_cut: float = 0.0) -> None:
        self.gpu_ids = gpu_ids
        self.keep_cut = keep_cut  # share of its KV a running replica may lose to stay on its GPU
        self.node = {g: int(g.rsplit("/", 1)[1]) // gpus_per_node for g in gpu_ids}
        self.memory = {g: usable_gib for g in gpu_ids}
        self.load = {g: max_load for g in gpu_ids}
        self.models: dict[str, set[str]] = {g: set() for g in gpu_ids}
        self.whole: set[str] = set()

    def copy(self) -> _Pool:
        """An independent copy (to try a packing without taking the room)."""
        other = _Pool([], 1, 0.0, 0.0, self.keep_cut)
        other.gpu_ids, other.node = list(self.gpu_ids), dict(self.node)
        other.memory, other.load = dict(self.memory), dict(self.load)
        other.models, other.whole = {g: set(m) for g, m in self.models.items()}, set(self.whole)
        return other

    def fits(self, g: str, item: _Item) -> bool:
        """Memory always; compute: a replica alone may fill its GPU (its capacity table has its own margins),
        replicas time-sharing one stay under the utilisation cap together."""
        if g in self.whole or item.config.model in self.models[g] or self.memory[g] < item.memory_gib - 1e-6:
            return False
        return not self.models[g] or self.load[g] >= item.load_share - 1e-6

    def take(self, g: str, item: _Item) -> None:
        self.memory[g] -= item.memory_gib
        self.load[g] -= item.load_share
        self.models[g].add(item.config.model)

    def take_whole(self, gpus: tuple[str, ...]) -> None:
        self.whole.update(gpus)

    def is_free(self, g: str) -> bool:
        return g not in self.whole and not self.models[g]

    def tp_group(self, tp: int, prefer: tuple[str, ...],
                 avoid: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
        """`tp` free GPUs of one node: the replica's current ones if free, else the fullest node that has room —
        GPUs in `avoid` (held by running time-shared replicas, packed after the groups) only where no node has
        room without them."""
        if len(prefer) == tp and all(g in self.memory and self.is_free(g) for g in prefer):
            return prefer
        for skip in (avoid, frozenset()):
            by_node: dict[int, list[str]] = {}
            for g in self.gpu_ids:
                if self.is_free(g) and g not in skip:
                    by_node.setdefault(self.node[g], []).append(g)
            fitting = [gs for gs in by_node.values() if len(gs) >= tp]
            if fitting:
                return tuple(min(fitting, key=len)[:tp])
        return None


def pack(problem: PlacementProblem, items: list[_Item], gpu_ids: dict[str, list[str]], *, time_limit_s: float = 1.0,
         packer: str = "auto") -> PackingResult:
    """Place items on the pools' healthy GPUs; `packer` is 'ffd', 'cpsat' or 'auto' (module docstring)."""
    if packer not in PACKERS:
        raise InputError("packer", packer, f"one of {', '.join(PACKERS)}")
    if packer == "cpsat":
        return _pack_cpsat(problem, items, gpu_ids, time_limit_s)
    ffd = pack_ffd(problem, items, gpu_ids)
    if packer == "ffd" or (not ffd.dropped and not ffd.num_shrunk) or time_limit_s < CPSAT_MIN_S:
        return ffd
    repaired = _pack_cpsat(problem, items, gpu_ids, time_limit_s)
    if _rank(repaired) >= _rank(ffd):
        return ffd
    return replace(repaired, packer="ffd+cp-sat")


def _pack_cpsat(problem: PlacementProblem, items: list[_Item], gpu_ids: dict[str, list[str]],
                time_limit_s: float) -> PackingResult:
    from optimizers.placement.cpsat import pack_cpsat  # OR-Tools loads only when a packing needs it

    return pack_cpsat(problem, items, gpu_ids, time_limit_s=time_limit_s)


def _rank(result: PackingResult) -> tuple[int, int, int]:
    return len(result.dropped), result.num_shrunk, result.gpus_used


def new_pools(problem: PlacementProblem, gpu_ids: dict[str, list[str]]) -> dict[int, _Pool]:
    lim, cut = problem.settings.max_gpu_utilization, problem.settings.keep_in_place_kv_cut
    return {p: _Pool(gpu_ids.get(pool.name, []), pool.gpus_per_node, pool.usable_gib, lim, cut)
            for p, pool in enumerate(problem.pools)}


def place_tp_groups(problem: PlacementProblem, items: list[_Item], pools: dict[int, _Pool],
                    out: list[PlacedReplica], dropped: list[str]) -> None:
    """Whole-GPU TP groups, largest first, on one node each (kept where they run when possible, and off the GPUs
    running time-shared replicas hold when another node has room: taking those moved them)."""
    held = frozenset(i.current[0] for i in items if i.config.shares_gpus and i.current)
    for item in sorted((i for i in items if not i.config.shares_gpus), key=lambda i: (-i.config.tp, not i.current)):
        pool = pools[item.config.pool_index]
        gpus = pool.tp_group(item.config.tp, item.current, held)
        if gpus is None:
            dropped.append(f"{item.config.model}: no node of {problem.pools[item.config.pool_index].name} has "
                           f"{item.config.tp} free GPUs for a TP-{item.config.tp} replica")
            continue
        pool.take_whole(gpus)
        out.append(placed(problem, item, gpus))


def pack_ffd(problem: PlacementProblem, items: list[_Item], gpu_ids: dict[str, list[str]]) -> PackingResult:
    """First-fit decreasing by memory, running replicas first on their own GPU, shrinking KV before dropping."""
    pools = new_pools(problem, gpu_ids)
    out: list[PlacedReplica] = []
    dropped: list[str] = []
    place_tp_groups(problem, items, pools, out, dropped)
    shared = [i for i in items if i.config.shares_gpus]
    done: set[int] = set()
    num_shrunk = num_kept_cut = 0
    for p, pool in pools.items():
        mine = [i for i in shared if i.config.pool_index == p]
        for index, gpu, item in pack_shared_ffd(mine, pool):
            out.append(placed(problem, item, (gpu,), wanted_kv_gib=mine[index].kv_share_gib))
            done.add(id(mine[index]))
            cut = item is not mine[index]
            kept = cut and item.current[:1] == (gpu,)
            num_kept_cut += kept
            num_shrunk += cut and not kept
    dropped += [f"{i.config.model}: no GPU of {problem.pools[i.config.pool_index].name} has "
                f"{shrink(i).memory_gib:.1f} GiB and {shrink(i).load_share:.2f} compute free"
                for i in shared if id(i) not in done]
    return PackingResult(tuple(out), tuple(dropped), "ffd", count_gpus(out), num_shrunk, num_kept_cut)


def pack_shared_ffd(items: list[_Item], pool: _Pool) -> Iterator[tuple[int, str, _Item]]:
    """First-fit decreasing of one pool's shared items (running ones first); takes their room on `pool` and yields
    (item index, GPU, the item as placed — kept on its GPU with a somewhat smaller share when only that keeps it
    there, else shrunk to the room of the roomiest GPU when it fits nowhere whole)."""
    order = sorted(range(len(items)), key=lambda i: (not items[i].current, -items[i].memory_gib))
    for index in order:
        item = items[index]
        gpu = _first_fit(pool, item, stay=True)
        if gpu is None and (kept := _keep_in_place(pool, item)) is not None:
            item, gpu = kept, kept.current[0]
        if gpu is None:
            gpu = _first_fit(pool, item)
        if gpu is None:
            item = _shrink_to_fit(pool, item)
            gpu = _first_fit(pool, item)
        if gpu is not None:
            pool.take(gpu, item)
            yield index, gpu, item


def _first_fit(pool: _Pool, item: _Item, stay: bool = False) -> str | None:
    """The item's current GPU if it fits there; else (unless `stay`) the fullest open GPU it fits, else a free one."""
    if item.current and item.current[0] in pool.memory and pool.fits(item.current[0], item):
        return item.current[0]
    if stay:
        return None
    used = [g for g in pool.gpu_ids if pool.models[g] and pool.fits(g, item)]
    if used:
        return min(used, key=lambda g: pool.memory[g])  # best fit among open GPUs
    return next((g for g in pool.gpu_ids if pool.is_free(g) and pool.fits(g, item)), None)


def _keep_in_place(pool: _Pool, item: _Item) -> _Item | None:
    """A running item with its KV share cut to the room its current GPU has, if that cut is within the pool's
    `keep_cut` of its share (and above the minimum share); None otherwise."""
    if not item.current or item.current[0] not in pool.memory or pool.keep_cut <= 0:
        return None
    c = item.config
    share = min(item.kv_share_gib, pool.memory[item.current[0]] - c.weight_gib_per_gpu)
    if share < max(c.kv_min_gib, (1 - pool.keep_cut) * item.kv_share_gib):
        return None
    kept = _with_share(item, share)
    return kept if pool.fits(item.current[0], kept) else None


def _with_share(item: _Item, share: float) -> _Item:
    """The item at KV share `share` (no larger than its own), its load scaled to the capacity that share has."""
    c = item.config
    rate = c.online.rate_at(share)
    load = min(item.load_share, rate / c.online_rate_max if c.online_rate_max > 0 else 0.0)
    return replace(item, memory_gib=c.weight_gib_per_gpu + share, kv_share_gib=share, load_share=load)


def _shrink_to_fit(pool: _Pool, item: _Item) -> _Item:
    """The item with its KV share cut to the most memory a GPU it may join has free (at least the minimum share):
    cutting straight to the minimum threw away SLO capacity the GPU had room for."""
    c = item.config
    room = [pool.memory[g] - c.weight_gib_per_gpu for g in pool.gpu_ids
            if g not in pool.whole and c.model not in pool.models[g]
            and (not pool.models[g] or pool.load[g] >= shrink(item).load_share - 1e-6)]
    share = min(item.kv_share_gib, max(room, default=0.0))
    if share <= c.kv_min_gib:
        return shrink(item)
    return _with_share(item, share)


def shrink(item: _Item) -> _Item:
    """The item with its KV share cut to the minimum (one max-context sequence) and its load scaled to match."""
    return _with_share(item, item.config.kv_min_gib)


def placed(problem: PlacementProblem, item: _Item, gpus: tuple[str, ...], wanted_kv_gib: float | None = None
           ) -> PlacedReplica:
    pool = problem.pools[item.config.pool_index]
    # A running replica keeps its id only where it stays; moved, it is a new replica (activated, the old one removed).
    rid = item.replica_id if item.replica_id and gpus == item.current else f"{item.config.model}@{gpus[0]}"
    return PlacedReplica(rid, item.config.model, pool.name, pool.gpu_type, item.config.tp, gpus, item.kv_share_gib,
                         item.memory_gib, item.load_share, item.config.index,
                         item.kv_share_gib if wanted_kv_gib is None else wanted_kv_gib)


def packing_shortfall_gib(problem: PlacementProblem, counts, kv_gib, replicas: list[PlacedReplica]) -> np.ndarray:
    """(P,) GiB per pool of the time-shared replicas the program placed (`counts`, `kv_gib` per config) that the
    packing did not place: KV shares it cut and replicas it dropped. Zero where packing delivered the program's
    memory (or more: a share is never below the minimum, which `replica_items` rounds up to)."""
    wanted = np.zeros(len(problem.pools))
    for c in problem.configs:
        n = int(counts[c.index])
        if c.shares_gpus and n > 0:
            wanted[c.pool_index] += n * c.weight_gib_per_gpu + max(float(kv_gib[c.index]), n * c.kv_min_gib)
    placed = np.zeros(len(problem.pools))
    for r in replicas:
        c = problem.configs[r.config_index]
        if c.shares_gpus and counts[c.index] > 0:
            placed[c.pool_index] += r.memory_gib
    return np.maximum(0.0, wanted - placed)


def count_gpus(out: list[PlacedReplica]) -> int:
    return len({g for r in out for g in r.gpu_ids})


KV_FILL_RESERVE = 0.02  # of a GPU's usable memory held back from the KV fill for page rounding


def fill_kv(problem: PlacementProblem, replicas: list[PlacedReplica]) -> list[PlacedReplica]:
    """Give the memory a shared GPU has left after packing to its TP = 1 replicas, in proportion to their KV shares.

    The program buys KV only where SLO capacity needs it, so packed GPUs keep memory no replica uses; a replica
    whose KV share is its page limit then runs out of pages on a burst while the GPU has room. The fill costs
    nothing and only raises capacity (`CapacityTable` is non-decreasing in the share). TP groups own their GPUs and
    already hold all the memory the weights leave.
    """
    usable = {p.name: p.usable_gib for p in problem.pools}
    by_gpu: dict[str, list[int]] = {}
    for i, r in enumerate(replicas):
        if r.tp == 1:
            by_gpu.setdefault(r.gpu_ids[0], []).append(i)
    out = list(replicas)
    for members in by_gpu.values():
        pool = replicas[members[0]].pool
        left = usable[pool] * (1 - KV_FILL_RESERVE) - sum(replicas[i].memory_gib for i in members)
        if left <= 0:
            continue
        # Replicas packing had to shrink get back what they lost first; the rest goes in proportion to the shares.
        deficit = {i: max(0.0, replicas[i].wanted_kv_gib - replicas[i].kv_share_gib) for i in members}
        back = min(1.0, left / sum(deficit.values())) if sum(deficit.values()) > 0 else 0.0
        grown = {i: replicas[i].kv_share_gib + back * deficit[i] for i in members}
        left -= sum(back * d for d in deficit.values())
        total = sum(grown.values())
        for i in members:
            r = replicas[i]
            share = min(problem.configs[r.config_index].kv_max_gib,
                        grown[i] + (left * grown[i] / total if left > 0 and total > 0 else 0.0))
            out[i] = replace(r, kv_share_gib=share, memory_gib=r.memory_gib + share - r.kv_share_gib)
    return out
