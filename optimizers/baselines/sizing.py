"""Whole-GPU replica sizing, one model per TP group: the deployment of vLLM-per-model fleets (used by `dedicated`,
and by `qlm` for its initial instances).

Every model first gets one replica at the smallest TP that fits, on the pool where that replica serves the most
(models with the fewest feasible pools choose first, then the busiest). Then, while GPUs remain, the model with the
highest utilisation (expected rate ÷ capacity of its replicas) gets one more replica, until every model is under
`target_utilization` — or, with `fill_all`, until the GPUs run out.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.fleet import FleetSpec, ServedModel
from core.latency import LatencyBook
from optimizers.baselines.demand import ModelDemand, replica_capacity_per_s, tightest_tpot_s
from optimizers.baselines.inventory import Inventory


@dataclass(frozen=True, slots=True)
class Sized:
    """One replica chosen by the sizing, with its estimated capacity and why it exists."""

    model: str
    pool: str
    gpu_ids: tuple[str, ...]
    tp: int
    capacity_per_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Option:
    pool: str
    tp: int
    capacity_per_s: float


def replica_options(fleet: FleetSpec, inventory: Inventory, latency: LatencyBook, model: ServedModel,
                    demand: ModelDemand) -> list[Option]:
    """Where one replica of `model` can run (smallest fitting TP per pool), best capacity first."""
    tpot = tightest_tpot_s(fleet)
    out = []
    for pool in inventory.pools:
        tp = inventory.smallest_tp(model, pool)
        if tp is None:
            continue
        lat = latency.get(model.arch, inventory.gpu_type_of(pool), tp)
        cap = replica_capacity_per_s(lat, demand, kv_tokens=inventory.kv_tokens(model, pool, tp), tpot_s=tpot)
        out.append(Option(pool, tp, cap))
    return sorted(out, key=lambda o: -o.capacity_per_s)  # stable: fleet pool order breaks ties


def size_replicas(fleet: FleetSpec, inventory: Inventory, latency: LatencyBook, demand: dict[str, ModelDemand],
                  *, target_utilization: float, fill_all: bool = False) -> tuple[list[Sized], list[str]]:
    """Choose replicas for every model; returns them and plan-level reasons (models left without a GPU)."""
    options = {m.name: replica_options(fleet, inventory, latency, m, demand[m.name]) for m in fleet.models}
    free = {g.gpu_id for g in inventory.gpus}
    sized: list[Sized] = []
    reasons: list[str] = []
    order = sorted(fleet.models, key=lambda m: (len(options[m.name]) or 99, -demand[m.name].rate_per_s))
    for m in order:
        rep = _take(inventory, options[m.name], free, m.name, "first replica")
        if rep is None:
            reasons.append(f"no free GPU group fits {m.name}: its requests cannot be served")
        else:
            sized.append(_explain(rep, demand[m.name], "its own GPUs (one replica per model at least)"))
    blocked: set[str] = set()
    while free:
        util = _utilisation(sized, demand, blocked)
        if not util:
            break
        name, u = max(util.items(), key=lambda kv: kv[1])
        if u <= target_utilization and not fill_all:
            break
        rep = _take(inventory, options[name], free, name, "extra replica")
        if rep is None:
            blocked.add(name)
            continue
        sized.append(_explain(rep, demand[name], f"utilisation {u:.2f} > target {target_utilization:.2f}"))
    return sized, reasons


def _take(inventory: Inventory, options: list[Option], free: set[str], model: str, what: str) -> Sized | None:
    for opt in options:
        group = inventory.tp_group(opt.pool, opt.tp, free)
        if group is not None:
            free.difference_update(group)
            return Sized(model, opt.pool, group, opt.tp, opt.capacity_per_s, what)
    return None


def _utilisation(sized: list[Sized], demand: dict[str, ModelDemand], blocked: set[str]) -> dict[str, float]:
    capacity: dict[str, float] = {}
    for s in sized:
        capacity[s.model] = capacity.get(s.model, 0.0) + s.capacity_per_s
    return {m: demand[m].rate_per_s / c for m, c in capacity.items() if m not in blocked}


def _explain(s: Sized, d: ModelDemand, why: str) -> Sized:
    reason = (f"{s.reason} of {s.model} on {s.pool} TP{s.tp}: {why}; expected {d.rate_per_s:.2f} req/s, "
              f"about {s.capacity_per_s:.2f} req/s per replica")
    return Sized(s.model, s.pool, s.gpu_ids, s.tp, s.capacity_per_s, reason)
