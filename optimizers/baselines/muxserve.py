"""`muxserve`: static co-location of models by popularity on GPU meshes with a shared KV cache.

Source: J. Duan et al., "MuxServe: Flexible Spatial-Temporal Multiplexing for Multiple LLM Serving", ICML 2024
(arXiv 2404.02015), §3.3 "Placement Optimization" (Algorithm 1, enumeration-based greedy placement) and the
authors' public placement code. What it does, and what this port keeps:

- The cluster is split into *meshes* (groups of GPUs of one node); every model on a mesh is sharded over all of
  its GPUs. MuxServe enumerates the ways to split nodes into meshes and keeps the split with the best estimated
  throughput.
- For one split, models are sorted by computation requirement — popularity (rate) × model scale — most demanding
  first; each goes to the mesh where it adds the most estimated throughput (ties: the smaller mesh), meshes being
  visited least-loaded first (load = Σ rate × scale ÷ mesh GPUs, then free memory). A mesh accepts a model when the
  weights fit and its compute is not over-committed beyond a 20 % overload allowance (their `overload_threshold`).
- A mesh's throughput is estimated from each model's latency: the KV cache left after the weights is split among
  its models in proportion to rate × KV bytes per token; each model's batch is capped by its share (and here also
  by the TPOT target); models time-share the mesh, so when their compute needs exceed it, all are scaled down.
- Placement is computed once from the expected rates and never changes; requests are served FCFS.

Simplifications (see docs/baselines.md): MuxServe shares a GPU *spatially* (CUDA MPS, prefill and decode jobs
multiplexed), our engines run one model's batch per iteration, so co-located models time-share; its ADBS scheduler
adapts KV quotas at run time, here the models simply share the device's KV pool. Mesh sizes are the TP degrees some
model accepts on that pool, and every node of a pool is split the same way (the enumeration over nodes is
exponential; the paper's clusters are homogeneous). A model busier than 80 % of what its largest mesh serves
(MuxServe would give it a bigger mesh; its TP options rule that out) is split into equal units placed like
separate models on distinct meshes. When no split can place every model within its compute
allowance (overload), the split with the best throughput ignoring compute is used rather than no plan at all.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from core.fleet import FleetSpec, ServedModel
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.state import FleetState
from optimizers.baselines.dedicated import StaticPlanner
from optimizers.baselines.demand import ModelDemand, expected_demand, replica_capacity_per_s, tightest_tpot_s
from optimizers.baselines.draft import PlanDraft
from optimizers.baselines.inventory import Inventory, MemoryLedger

OVERLOAD_ALLOWANCE = 0.2  # MuxServe's `overload_threshold` of 20 (of 100 % compute) per mesh
UNIT_UTILISATION = 0.8  # a model is split into units when its rate exceeds this share of its best mesh
MAX_SPLITS = 4096  # cap on enumerated cluster splits (product over pools)

Split = list[tuple[str, tuple[str, ...]]]  # meshes as (pool, GPU ids)


@dataclass(frozen=True, slots=True)
class Unit:
    """What the greedy places: a model, or one of several equal shares of a model too busy for one mesh."""

    key: str  # "<model>#<k>"
    model: ServedModel
    demand: ModelDemand


@dataclass
class Mesh:
    """A group of GPUs of one node serving its models with TP = its size."""

    pool: str
    gpu_ids: tuple[str, ...]
    models: list[str] = field(default_factory=list)  # unit keys
    load_tag: float = 0.0  # −Σ rate × scale ÷ size of the models placed (MuxServe's compute tag)
    served_per_s: float = 0.0
    utilisation: float = 0.0  # compute its models need ÷ what it has

    @property
    def size(self) -> int:
        return len(self.gpu_ids)


class MuxServePlanner(StaticPlanner):
    """MuxServe's enumeration-based greedy placement, computed once from expected rates; FCFS queues."""

    name = "muxserve"
    solver_name = "muxserve-enumerate-greedy"

    def place(self, draft: PlanDraft, fleet: FleetSpec, state: FleetState,
              scenarios: ScenarioSet | None) -> tuple[str, int]:
        placer = _Placer(fleet, Inventory(fleet, state), self.latency, expected_demand(fleet, state, scenarios))
        within, beyond = placer.candidate_splits()
        best, status = None, "heuristic"
        # MuxServe's order of preference: its pruned splits, then every split; compute allowance, then memory only.
        for respect_compute, splits in [(True, within), (True, beyond), (False, within), (False, beyond)]:
            best = placer.best(splits, respect_compute=respect_compute)
            if best is not None:
                if not respect_compute:
                    status = "heuristic-overloaded"
                    draft.reasons.append("no mesh split serves every model within its compute allowance: the "
                                         "demand exceeds the fleet; placed by memory only")
                break
        tried = len(within) + len(beyond)
        if best is None:
            draft.reasons.append("no mesh split fits every model's weights: nothing placed")
            return "infeasible", tried
        meshes, served = best
        placer.emit(draft, meshes)
        sizes = sorted((m.size for m in meshes if m.models), reverse=True)
        draft.reasons.append(f"best of {tried} mesh splits: meshes of {sizes} GPUs, estimated "
                             f"{served:.2f} req/s served of {placer.total_rate:.2f} expected")
        return status, tried


class _Placer:
    """One enumeration: mesh splits of the cluster, the greedy placement on each, and the throughput estimate."""

    def __init__(self, fleet: FleetSpec, inventory: Inventory, latency: LatencyBook,
                 demand: dict[str, ModelDemand]) -> None:
        self.fleet = fleet
        self.inventory = inventory
        self.latency = latency
        self.demand = demand
        self.tpot_s = tightest_tpot_s(fleet)
        self.total_rate = sum(d.rate_per_s for d in demand.values())
        self.units = {u.key: u for m in fleet.models for u in self._units_of(m)}
        # Most demanding first: rate × model scale (parameters), then the larger model.
        self.order = sorted(self.units.values(), key=lambda u: (-u.demand.rate_per_s * u.model.arch.params_b,
                                                                 -u.model.arch.params_b, u.key))

    def _units_of(self, model: ServedModel) -> list[Unit]:
        """One unit per model, or several (each an equal share of its rate) when even its largest mesh cannot
        serve it: MuxServe would give such a model a bigger mesh, which its TP options rule out here."""
        d = self.demand[model.name]
        best = max((self._capacity(model, d, pool, tp) for pool in self.inventory.pools
                    for tp in self.inventory.fitting_tps(model, pool)), default=0.0)
        n = max(1, math.ceil(d.rate_per_s / (UNIT_UTILISATION * best))) if best > 0 else 1
        share = ModelDemand(model.name, d.rate_per_s / n, d.prompt_tokens, d.output_tokens)
        return [Unit(f"{model.name}#{k}", model, share) for k in range(n)]

    def _capacity(self, model: ServedModel, d: ModelDemand, pool: str, tp: int) -> float:
        lat = self.latency.get(model.arch, self.inventory.gpu_type_of(pool), tp)
        kv = self.inventory.kv_tokens(model, pool, tp)
        return replica_capacity_per_s(lat, d, kv_tokens=kv, tpot_s=self.tpot_s)

    # -- enumeration -----------------------------------------------------------------------------------------------
    def candidate_splits(self) -> tuple[list[Split], list[Split]]:
        """Every combination of one node split per pool, largest meshes first, as (splits with at most as many
        meshes as model units — MuxServe's pruning rule —, the others)."""
        per_pool = [self._pool_splits(pool) for pool in self.inventory.pools]
        combos = [list(itertools.chain.from_iterable(c))
                  for c in itertools.islice(itertools.product(*per_pool), MAX_SPLITS)]
        within = [c for c in combos if len(c) <= len(self.units)]
        return within, [c for c in combos if len(c) > len(self.units)]

    def _pool_splits(self, pool: str) -> list[Split]:
        sizes = sorted({tp for m in self.fleet.models for tp in self.inventory.fitting_tps(m, pool)}, reverse=True)
        if not sizes:
            return [[]]
        nodes = list(self.inventory.nodes_of(pool).values())
        full = max(len(n) for n in nodes)
        out = []
        for parts in _partitions(full, sizes) or [_greedy_parts(full, sizes)]:
            meshes = []
            for node in nodes:
                ids = [g.gpu_id for g in node]
                node_parts = parts if len(ids) == full else _greedy_parts(len(ids), sizes)
                for size in node_parts:
                    meshes.append((pool, tuple(ids[:size])))
                    ids = ids[size:]
            out.append(meshes)
        return out

    def best(self, splits: list[Split], *, respect_compute: bool) -> tuple[list[Mesh], float] | None:
        best: tuple[list[Mesh], float] | None = None
        best_key = (0.0, 0.0)
        for split in splits:
            meshes = self.place_on([Mesh(pool, ids) for pool, ids in split], respect_compute)
            if meshes is None:
                continue
            served = sum(m.served_per_s for m in meshes)
            # Most throughput; ties (common with headroom) to the split whose busiest mesh is least loaded.
            key = (round(served, 9), -max(m.utilisation for m in meshes))
            if best is None or key > best_key:
                best, best_key = (meshes, served), key
        return best

    # -- greedy placement on one split -----------------------------------------------------------------------------
    def place_on(self, meshes: list[Mesh], respect_compute: bool) -> list[Mesh] | None:
        ledger = MemoryLedger(self.inventory)
        for unit in self.order:
            ranked = sorted(meshes, key=lambda m: (-m.load_tag, -ledger.free_bytes(m.gpu_ids[0])))
            best: tuple[tuple[float, float], Mesh, float, float] | None = None  # (gain, per-GPU capacity), …
            for mesh in ranked:
                if not self._fits(unit, mesh, ledger):
                    continue
                served, util = self.mesh_estimate(mesh, mesh.models + [unit.key], ledger, extra=unit.model)
                if respect_compute and util > 1 + OVERLOAD_ALLOWANCE:
                    continue
                # Most throughput gained; ties (the model is served either way) to the mesh that serves it most
                # efficiently per GPU — on a homogeneous cluster the smaller mesh, MuxServe's rule.
                per_gpu = self._capacity(unit.model, unit.demand, mesh.pool, mesh.size) / mesh.size
                key = (round(served - mesh.served_per_s, 9), round(per_gpu, 9))
                if best is None or key > best[0]:
                    best = (key, mesh, served, util)
            if best is None:
                return None
            _, mesh, served, util = best
            ledger.place(unit.model, mesh.gpu_ids, mesh.size)
            mesh.models.append(unit.key)
            mesh.served_per_s, mesh.utilisation = served, util
            mesh.load_tag -= unit.demand.rate_per_s * unit.model.arch.params_b / mesh.size
        return meshes

    def _fits(self, unit: Unit, mesh: Mesh, ledger: MemoryLedger) -> bool:
        """The mesh size is a TP degree the model fits at, the weights fit, and no other unit of it is there."""
        return (mesh.size in self.inventory.fitting_tps(unit.model, mesh.pool)
                and all(self.units[k].model.name != unit.model.name for k in mesh.models)
                and ledger.can_place(unit.model, mesh.gpu_ids, mesh.size))

    def mesh_estimate(self, mesh: Mesh, keys: list[str], ledger: MemoryLedger,
                      extra: ServedModel | None = None) -> tuple[float, float]:
        """(served req/s, compute utilisation) of the units `keys` time-sharing `mesh`, the KV split by rate × KV
        bytes per token."""
        units = [self.units[k] for k in keys]
        gpu = self.inventory.gpu_type_of(mesh.pool)
        extra_weights = extra.arch.weight_bytes / mesh.size if extra is not None else 0.0
        kv_room = ledger.kv_room_bytes(mesh.gpu_ids[0]) - extra_weights
        basis = [max(u.demand.rate_per_s, 1e-6) * u.model.kv_bytes_per_token for u in units]
        util, rate = 0.0, 0.0
        for u, b in zip(units, basis):
            kv_tokens = int(kv_room * b / sum(basis) // u.model.arch.kv_bytes_per_token_per_gpu(mesh.size))
            lat = self.latency.get(u.model.arch, gpu, mesh.size)
            util += u.demand.rate_per_s / replica_capacity_per_s(lat, u.demand, kv_tokens=max(kv_tokens, 1),
                                                                  tpot_s=self.tpot_s)
            rate += u.demand.rate_per_s
        return rate / max(1.0, util), util

    # -- output ----------------------------------------------------------------------------------------------------
    def emit(self, draft: PlanDraft, meshes: list[Mesh]) -> None:
        """The placement as replicas (one per unit); a mesh's KV is split in proportion to rate × KV bytes per
        token (MuxServe's initial quotas); a model's units share its traffic equally."""
        for mesh in meshes:
            peers = len(mesh.models) - 1
            for key in mesh.models:
                u = self.units[key]
                weight = max(u.demand.rate_per_s, 1e-6) * u.model.kv_bytes_per_token
                draft.add_replica(u.model.name, mesh.pool, mesh.gpu_ids, mesh.size, kv_weight=weight, reason=(
                    f"{u.model.name} ({u.demand.rate_per_s:.2f} req/s expected here) on a {mesh.size}-GPU mesh of "
                    f"{mesh.pool} shared with {peers} other model(s), where it adds the most estimated throughput"))


def _partitions(total: int, sizes: list[int]) -> list[list[int]]:
    """Ways to write `total` as a non-increasing sum of `sizes` (given descending), largest parts first."""
    if total == 0:
        return [[]]
    out = []
    for i, s in enumerate(sizes):
        if s <= total:
            out.extend([s] + rest for rest in _partitions(total - s, sizes[i:]))
    return out


def _greedy_parts(total: int, sizes: list[int]) -> list[int]:
    parts = []
    for s in sizes:
        while total >= s:
            parts.append(s)
            total -= s
    return parts
