"""Activation on demand between placements: a request for a model with no replica gets one at once, next to what
runs, without re-solving the placement program.

Re-placing the whole fleet on every such request (the long-tail fleet raised one a second) cost a full solve each
time and moved replicas and KV shares back and forth. Prism activates the model on the least-pressured GPU instead;
here the replicas of the last placement keep their GPUs at the KV shares the program gave them, every waiting
model gets one replica of the cheapest configuration that covers the rate it needs (`activation_config`), sized for
that rate, packed first-fit into the room those shares leave (a free GPU only when no used one has room), and the
memory left over is filled into KV shares again. The next periodic placement decides
whether the model keeps its replica.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from optimizers.placement.packing import PackingResult, PlacedReplica, _Item, fill_kv, item_for, pack
from optimizers.placement.problem import PlacementProblem, ReplicaConfig


def activate_on_demand(problem: PlacementProblem, kept: list[PlacedReplica], base: Mapping[str, PlacedReplica],
                       waiting_rps: Mapping[str, float], gpu_ids: dict[str, list[str]],
                       time_limit_s: float) -> tuple[list[PlacedReplica], PackingResult | None]:
    """`kept` plus a replica for each model of `waiting_rps` that has none (unchanged when there is none to add).
    `base` maps a kept replica id to its replica as the last placement packed it (before the KV fill)."""
    have = {r.model for r in kept}
    index = {m.name: i for i, m in enumerate(problem.models)}
    held = {problem.configs[r.config_index].pool_index for r in kept}
    new = []
    for name, rate in sorted(waiting_rps.items()):
        c = activation_config(problem, index[name], rate, held) if name in index and name not in have else None
        if c is not None:
            share = max(c.kv_min_gib, c.online.kv_needed_gib(rate))
            new.append(item_for(c, share, min(1.0, rate / c.online_rate_max) if c.online_rate_max else 0.0))
    if not new:
        return kept, None
    return add_replicas(problem, kept, base, new, gpu_ids, time_limit_s)


def add_replicas(problem: PlacementProblem, kept: list[PlacedReplica], base: Mapping[str, PlacedReplica],
                 new: list[_Item], gpu_ids: dict[str, list[str]],
                 time_limit_s: float, *, keep_gib: Mapping[str, float] | None = None
                 ) -> tuple[list[PlacedReplica], PackingResult]:
    """`kept` at the KV shares the last placement gave them (`base`: its replicas before the KV fill) — or, with
    `keep_gib`, at those shares per replica id (at most what they hold now) — on their GPUs where they still fit,
    plus the `new` replicas (`packing.item_for` / `replica_items`), packed first-fit into the room left (a free GPU
    only when no used one has room); the memory left over is filled into KV shares again."""
    items = []
    for r in kept:
        c = problem.configs[r.config_index]
        r0 = base.get(r.replica_id, r)
        load = r0.load_share or (c.online.rate_at(r0.kv_share_gib) / c.online_rate_max if c.online_rate_max else 0.0)
        share = min(r.kv_share_gib, r0.kv_share_gib if keep_gib is None else keep_gib.get(r.replica_id, np.inf))
        items.append(item_for(c, share, load, r.gpu_ids, r.replica_id))
    packed = pack(problem, items + new, gpu_ids, time_limit_s=time_limit_s)
    return fill_kv(problem, list(packed.replicas)), packed


def activation_config(problem: PlacementProblem, m: int, rate: float, held: set[int]) -> ReplicaConfig | None:
    """The config model m activates on between placements: among its configs on on-demand pools (spot pools are
    the spot tier's; any pool when the fleet has no other) whose SLO capacity covers `rate` (all of them when none
    does), the cheapest to start — one on a pool where a kept replica holds GPUs first (it
    may fit beside it at no cost), else the lowest price of its GPUs — then the fewest GPUs and the highest
    capacity. The program's own on-demand config (`PlacementProblem.on_demand`) ignores price; activated on a free
    GPU it bought an A100 for two tiny models while a CPU worker and held L4s had room."""
    configs = [c for c in problem.configs_of_model(m) if problem.pools[c.pool_index].num_gpus > 0]
    configs = [c for c in configs if not problem.pools[c.pool_index].spot] or configs
    covering = [c for c in configs if c.online_rate_max >= rate] or configs
    return min(covering, default=None, key=lambda c: (
        c.pool_index not in held, problem.pools[c.pool_index].price_per_hour * c.tp, c.tp, -c.online_rate_max))
