"""Packing: turn per-pool replica counts into replicas on concrete GPUs and nodes.

The program decides counts per (model, pool, TP) and the GPUs a pool spends; this module chooses which GPUs.
TP groups take whole GPUs of one node (never spanning nodes), best fit by node. TP = 1 replicas are packed onto
shared GPUs under two capacities per GPU — memory (weights + KV share) and compute (the load share the program gave
them) — with one replica of a model per GPU (spreading a model's replicas is its fault tolerance). Replicas that
already run keep their GPUs when they still fit (stability).

Two packers: `pack_ffd` (first-fit decreasing, milliseconds) and `pack_cpsat` (OR-Tools CP-SAT: fewest GPUs, fewest
moves, within a time limit). `pack` uses CP-SAT up to `CPSAT_MAX_ITEMS` shared replicas and FFD beyond, where
bench/solver_scaling.py measures CP-SAT no longer finding fewer GPUs within its limit (docs/optimizers.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from optimizers.placement.problem import PlacementProblem, ReplicaConfig

CPSAT_MAX_ITEMS = 160
CPSAT_IN_AUTO = False  # measured: see docs/optimizers.md (FFD matches CP-SAT's GPU count on the benchmark fleets)
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


@dataclass(frozen=True)
class PackingResult:
    replicas: tuple[PlacedReplica, ...]
    dropped: tuple[str, ...]  # reasons for replicas that did not fit anywhere
    packer: str
    gpus_used: int


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
            items.append(_Item(c, c.weight_gib_per_gpu + share, load, share, gpus, rid))
    return items


class _Pool:
    """Free capacity of one pool's GPUs while packing."""

    def __init__(self, gpu_ids: list[str], gpus_per_node: int, usable_gib: float, max_load: float) -> None:
        self.gpu_ids = gpu_ids
        self.node = {g: int(g.rsplit("/", 1)[1]) // gpus_per_node for g in gpu_ids}
        self.memory = {g: usable_gib for g in gpu_ids}
        self.load = {g: max_load for g in gpu_ids}
        self.models: dict[str, set[str]] = {g: set() for g in gpu_ids}
        self.whole: set[str] = set()

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

    def tp_group(self, tp: int, prefer: tuple[str, ...]) -> tuple[str, ...] | None:
        """`tp` free GPUs of one node: the replica's current ones if free, else the fullest node that has room."""
        if len(prefer) == tp and all(g in self.memory and self.is_free(g) for g in prefer):
            return prefer
        by_node: dict[int, list[str]] = {}
        for g in self.gpu_ids:
            if self.is_free(g):
                by_node.setdefault(self.node[g], []).append(g)
        fitting = [gs for gs in by_node.values() if len(gs) >= tp]
        return tuple(min(fitting, key=len)[:tp]) if fitting else None


def pack(problem: PlacementProblem, items: list[_Item], gpu_ids: dict[str, list[str]], *, time_limit_s: float = 1.0,
         packer: str = "auto") -> PackingResult:
    """Place items on the pools' healthy GPUs; `packer` is 'ffd', 'cpsat' or 'auto' (module docstring)."""
    shared = sum(1 for i in items if i.config.shares_gpus)
    use_cpsat = packer == "cpsat" or (packer == "auto" and shared <= CPSAT_MAX_ITEMS and CPSAT_IN_AUTO)
    if use_cpsat:
        from optimizers.placement.cpsat import pack_cpsat

        return pack_cpsat(problem, items, gpu_ids, time_limit_s=time_limit_s)
    return pack_ffd(problem, items, gpu_ids)


def new_pools(problem: PlacementProblem, gpu_ids: dict[str, list[str]]) -> dict[int, _Pool]:
    lim = problem.settings.max_gpu_utilization
    return {p: _Pool(gpu_ids.get(pool.name, []), pool.gpus_per_node, pool.usable_gib, lim)
            for p, pool in enumerate(problem.pools)}


def place_tp_groups(problem: PlacementProblem, items: list[_Item], pools: dict[int, _Pool],
                    out: list[PlacedReplica], dropped: list[str]) -> None:
    """Whole-GPU TP groups, largest first, on one node each (kept where they run when possible)."""
    for item in sorted((i for i in items if not i.config.shares_gpus), key=lambda i: (-i.config.tp, not i.current)):
        pool = pools[item.config.pool_index]
        gpus = pool.tp_group(item.config.tp, item.current)
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
    order = sorted((i for i in items if i.config.shares_gpus), key=lambda i: (not i.current, -i.memory_gib))
    for item in order:
        pool = pools[item.config.pool_index]
        gpu = _first_fit(pool, item)
        if gpu is None:
            smaller = shrink(item)
            gpu = _first_fit(pool, smaller)
            item = smaller
        if gpu is None:
            dropped.append(f"{item.config.model}: no GPU of {problem.pools[item.config.pool_index].name} has "
                           f"{item.memory_gib:.1f} GiB and {item.load_share:.2f} compute free")
            continue
        pool.take(gpu, item)
        out.append(placed(problem, item, (gpu,)))
    return PackingResult(tuple(out), tuple(dropped), "ffd", _count_gpus(out))


def _first_fit(pool: _Pool, item: _Item) -> str | None:
    if item.current and item.current[0] in pool.memory and pool.fits(item.current[0], item):
        return item.current[0]
    used = [g for g in pool.gpu_ids if pool.models[g] and pool.fits(g, item)]
    if used:
        return min(used, key=lambda g: pool.memory[g])  # best fit among open GPUs
    return next((g for g in pool.gpu_ids if pool.is_free(g) and pool.fits(g, item)), None)


def shrink(item: _Item) -> _Item:
    """The item with its KV share cut to the minimum (one max-context sequence) and its load scaled to match."""
    c = item.config
    rate = c.online.rate_at(c.kv_min_gib)
    load = min(item.load_share, rate / c.online_rate_max if c.online_rate_max > 0 else 0.0)
    return replace(item, memory_gib=c.weight_gib_per_gpu + c.kv_min_gib, kv_share_gib=c.kv_min_gib, load_share=load)


def placed(problem: PlacementProblem, item: _Item, gpus: tuple[str, ...]) -> PlacedReplica:
    pool = problem.pools[item.config.pool_index]
    rid = item.replica_id or f"{item.config.model}@{gpus[0]}"
    return PlacedReplica(rid, item.config.model, pool.name, pool.gpu_type, item.config.tp, gpus, item.kv_share_gib,
                         item.memory_gib, item.load_share, item.config.index)


def _count_gpus(out: list[PlacedReplica]) -> int:
    return len({g for r in out for g in r.gpu_ids})
