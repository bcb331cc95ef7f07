"""The GPUs a baseline may place replicas on, and a memory ledger for co-locating models on them.

Only GPUs that are healthy in the `FleetState` are offered (the Planner contract). A TP group is `tp` GPUs of one
node of one pool, leader first. A GPU holds the weights of every replica placed on it; each replica also keeps KV
room for at least one full-context sequence (the fit rule of `FleetSpec.fit`), so co-location never promises
memory that is not there.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from core.catalog import GPUType
from core.fleet import FleetSpec, ServedModel
from core.state import FleetState


@dataclass(frozen=True, slots=True)
class Gpu:
    """One healthy GPU as a planner sees it."""

    gpu_id: str
    pool: str
    gpu_type: GPUType
    node: int  # node index within the pool (TP groups never span nodes)
    usable_bytes: float  # memory the engine may use for weights + KV (the fleet's memory policy)
    price_per_hour: float


class Inventory:
    """The healthy GPUs of a fleet, in fleet order, by pool and node."""

    def __init__(self, fleet: FleetSpec, state: FleetState) -> None:
        healthy = set(state.healthy_gpu_ids)
        gpus = []
        for pool in fleet.pools:
            usable = fleet.usable_bytes_per_gpu(pool.gpu)
            for i, gpu_id in enumerate(pool.gpu_ids()):
                if gpu_id in healthy:
                    gpus.append(Gpu(gpu_id, pool.name, pool.gpu, pool.node_of(i), usable, pool.hourly_price))
        self.fleet = fleet
        self.gpus: tuple[Gpu, ...] = tuple(gpus)
        self._by_id = {g.gpu_id: g for g in gpus}

    def __len__(self) -> int:
        return len(self.gpus)

    def __contains__(self, gpu_id: object) -> bool:
        return gpu_id in self._by_id

    def gpu(self, gpu_id: str) -> Gpu:
        return self._by_id[gpu_id]

    @property
    def pools(self) -> list[str]:
        """Pools with at least one healthy GPU, in fleet order."""
        return list(dict.fromkeys(g.pool for g in self.gpus))

    def gpus_of(self, pool: str) -> list[Gpu]:
        return [g for g in self.gpus if g.pool == pool]

    def nodes_of(self, pool: str) -> dict[int, list[Gpu]]:
        nodes: dict[int, list[Gpu]] = {}
        for g in self.gpus_of(pool):
            nodes.setdefault(g.node, []).append(g)
        return nodes

    def gpu_type_of(self, pool: str) -> GPUType:
        return self.fleet.pool(pool).gpu

    def fitting_tps(self, model: ServedModel, pool: str) -> list[int]:
        """TP degrees (ascending) at which one replica of `model` fits a GPU group of `pool`."""
        spec = self.fleet.pool(pool)
        return sorted(
            tp for tp in model.tp_options
            if tp <= spec.gpus_per_node and self.fleet.fit(model, spec.gpu, tp).fits
        )

    def smallest_tp(self, model: ServedModel, pool: str) -> int | None:
        tps = self.fitting_tps(model, pool)
        return tps[0] if tps else None

    def tp_group(self, pool: str, tp: int, free: Collection[str]) -> tuple[str, ...] | None:
        """The first `tp` free GPUs of one node of `pool` (lowest node, lowest indices), or None."""
        for gpus in self.nodes_of(pool).values():
            ids = [g.gpu_id for g in gpus if g.gpu_id in free]
            if len(ids) >= tp:
                return tuple(ids[:tp])
        return None

    def kv_tokens(self, model: ServedModel, pool: str, tp: int) -> int:
        """KV tokens one replica holds when it has its GPUs to itself."""
        return self.fleet.fit(model, self.gpu_type_of(pool), tp).kv_capacity_tokens


class MemoryLedger:
    """Bytes committed per GPU by the replicas placed on it: weights, plus one full-context sequence of KV each."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.weight_bytes: dict[str, float] = {g.gpu_id: 0.0 for g in inventory.gpus}
        self.reserved_bytes: dict[str, float] = {g.gpu_id: 0.0 for g in inventory.gpus}

    @staticmethod
    def demand_bytes(model: ServedModel, tp: int) -> tuple[float, float]:
        """(weight bytes, minimum KV bytes) per GPU of one replica of `model` at `tp`."""
        weights = model.arch.weight_bytes / tp
        return weights, model.max_context_tokens * model.arch.kv_bytes_per_token_per_gpu(tp)

    def can_place(self, model: ServedModel, gpu_ids: Iterable[str], tp: int) -> bool:
        weights, kv = self.demand_bytes(model, tp)
        return all(
            self.weight_bytes[g] + self.reserved_bytes[g] + weights + kv <= self.inventory.gpu(g).usable_bytes
            for g in gpu_ids
        )

    def place(self, model: ServedModel, gpu_ids: Iterable[str], tp: int) -> None:
        weights, kv = self.demand_bytes(model, tp)
        for g in gpu_ids:
            self.weight_bytes[g] += weights
            self.reserved_bytes[g] += kv

    def remove(self, model: ServedModel, gpu_ids: Iterable[str], tp: int) -> None:
        weights, kv = self.demand_bytes(model, tp)
        for g in gpu_ids:
            self.weight_bytes[g] -= weights
            self.reserved_bytes[g] -= kv

    def kv_room_bytes(self, gpu_id: str) -> float:
        """Memory left for KV on a GPU after the weights placed on it (shared by its models' KV)."""
        return self.inventory.gpu(gpu_id).usable_bytes - self.weight_bytes[gpu_id]

    def free_bytes(self, gpu_id: str) -> float:
        return self.kv_room_bytes(gpu_id) - self.reserved_bytes[gpu_id]
