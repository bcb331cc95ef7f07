"""`prism`: KV-pressure greedy placement, activation on demand, idle eviction under memory pressure, per-GPU EDF.

Source: S. Yu et al., "Prism: Unleashing GPU Sharing for Cost-Efficient Multi-LLM Serving" (arXiv 2505.04021,
kvcached), §4 "Two-level scheduling". What it does, and what this port keeps:

- KV memory on demand: models co-located on a GPU draw KV pages from one shared pool (kvcached); no static
  per-model split. Here: replicas are activated without a KV limit on a shared page pool.
- Global placement (Algorithm 1), re-run over a 60 s window with the rates observed in it: each model's weighted
  rate is token rate × KV bytes per token ÷ TPOT SLO; a GPU's KV pressure is the sum of its models' weighted rates
  ÷ the KV memory left after their weights. Models, heaviest first, go greedily to the GPU (TP models: to the
  node-local GPU group, as anti-affine entries) with the least pressure after adding them; a placed model moves
  only when the best GPU beats its current one by more than the migration threshold τ.
- Triggers: a request for an inactive model activates it on demand on the least-pressured GPU that fits (0.7 s for
  ≤ 8B models from host memory in the paper; the simulator charges the LatencyModel's load time); a model idle for
  ~45 s is evicted (weights to host memory) when its GPU's memory is tight — the paper found < 40 s thrashes and
  > 80 s hoards memory.
- Local: one queue per GPU ordered by TTFT deadline (EDF); Prism's Moore–Hodgson admission is left to the
  engine's EDF rule.

Simplifications (docs/baselines.md): τ is not given in the paper (we use 0.25); "memory tight" is a GPU whose KV
pool is ≥ 80 % used or that must make room for an activation; a model busier than 80 % of what one replica
serves is split into several entries (replicas) placed anti-affine, like a TP model's shards (Prism's traces have
no model that needs more than a GPU; a production deployment replicates one). Prism treats demand as
unpredictable: the only use of `scenarios` is the very first placement, before anything has been observed (the
operator's initial deployment).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass

from core.fleet import FleetSpec, ServedModel
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.plan import Plan, Replica, SolverStats
from core.state import EventKind, FleetState
from core.status import ReplicaStatus
from optimizers.baselines.demand import (
    ModelDemand,
    expected_demand,
    observed_demand,
    replica_capacity_per_s,
    tightest_tpot_s,
)
from optimizers.baselines.draft import PlanDraft, replica_id
from optimizers.baselines.inventory import Inventory, MemoryLedger

IDLE_EVICT_S = 45.0  # evict a model idle this long when memory is tight (paper: <40 s thrashes, >80 s hoards)
REPLACE_WINDOW_S = 60.0  # global re-placement period, over the rates of this window
MOVE_THRESHOLD = 0.25  # τ: move a placed model only if its new GPU's pressure is lower by this fraction
TIGHT_KV_FRACTION = 0.8  # a GPU whose KV pool is this full is "memory tight"
REPLICA_UTILISATION = 0.8  # a model busier than this share of one replica's capacity gets more replicas


@dataclass(frozen=True, slots=True)
class Group:
    """A GPU group one replica can occupy: `tp` GPUs of one node."""

    pool: str
    gpu_ids: tuple[str, ...]


class PrismPlanner:
    """Prism's two-level scheduling as a reactive Planner."""

    name = "prism"
    subscriptions: frozenset[EventKind] = frozenset(
        {EventKind.REQUEST_FOR_INACTIVE_MODEL, EventKind.MODEL_IDLE, EventKind.GPU_REMOVED, EventKind.GPU_ADDED}
    )

    def __init__(self, latency: LatencyBook | None = None, *, idle_evict_s: float = IDLE_EVICT_S,
                 replace_window_s: float = REPLACE_WINDOW_S, move_threshold: float = MOVE_THRESHOLD) -> None:
        self.latency = latency or LatencyBook()
        self.idle_evict_s = idle_evict_s
        self.replace_window_s = replace_window_s
        self.move_threshold = move_threshold

    def plan(self, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None, budget_s: float) -> Plan:
        started = time.perf_counter()
        draft = PlanDraft(self.name, fleet, state, self.latency, queue_rule="edf")
        prev = state.current_plan if state.current_plan and state.current_plan.policy == self.name else None
        round_ = _Round(self, fleet, state, draft, prev)
        if prev is None:
            round_.place_globally(expected_demand(fleet, state, scenarios), "initial placement")
        elif self._replace_due(prev, state):
            round_.place_globally(observed_demand(fleet, state), f"re-placement over the last "
                                                                 f"{self.replace_window_s:.0f} s")
        else:
            round_.keep_current()
        round_.evict_idle()
        round_.activate_on_demand()
        stats = SolverStats(name="kv-pressure-greedy", status="heuristic", time_s=time.perf_counter() - started,
                            stages={"global": 1.0 if round_.global_pass else 0.0})
        return draft.build(stats)

    def _replace_due(self, prev: Plan, state: FleetState) -> bool:
        last = _last_global_s(prev)
        return last is None or state.time_s - last >= self.replace_window_s


GLOBAL_MARK = "prism global placement at t="


def _last_global_s(plan: Plan) -> float | None:
    """When the last global placement ran: recorded in plan reasons, carried forward by every later plan."""
    for reason in plan.reasons:
        if reason.startswith(GLOBAL_MARK):
            return float(reason[len(GLOBAL_MARK):].split()[0])
    return None


class _Round:
    """One planner call: the placement being built, its memory ledger and the pressure of every GPU."""

    def __init__(self, planner: PrismPlanner, fleet: FleetSpec, state: FleetState, draft: PlanDraft,
                 prev: Plan | None) -> None:
        self.p = planner
        self.fleet = fleet
        self.state = state
        self.draft = draft
        self.prev = prev
        self.inventory = Inventory(fleet, state)
        self.ledger = MemoryLedger(self.inventory)
        self.weighted: dict[str, float] = {}  # replica id → weighted rate of the replica placed this round
        self.tpot_s = tightest_tpot_s(fleet) or 1.0
        self.global_pass = False
        self.observed = observed_demand(fleet, state)
        self.status: dict[str, ReplicaStatus] = {
            r.replica_id: r for w in state.workers if w.healthy for r in w.replicas
        }

    # -- global placement ------------------------------------------------------------------------------------------
    def place_globally(self, demand: dict[str, ModelDemand], why: str) -> None:
        """Algorithm 1: heaviest weighted rate first, to the least-pressured GPU group; move past τ only. A model
        busier than one replica serves is split into several entries, anti-affine like a TP model's shards."""
        self.global_pass = True
        current = self._current_groups()
        wanted = [m for m in self.fleet.models if demand[m.name].rate_per_s > 0 or m.name in current]
        # Heaviest first; models already resident before new ones: they hold memory, which only the idle
        # eviction rule takes back (a new model that finds no room waits for it, or for activation on demand).
        wanted.sort(key=lambda m: (m.name not in current, -self._weighted_rate(m, demand[m.name])))
        for model in wanted:
            count = self._replicas_needed(model, demand[model.name])
            w = self._weighted_rate(model, demand[model.name]) / count
            spare = list(current.get(model.name, []))
            for _ in range(count):
                self._place_entry(model, w, spare, why)
        self.draft.reasons.append(f"{GLOBAL_MARK}{self.state.time_s:.3f} ({why})")

    def _place_entry(self, model: ServedModel, w: float, spare: list[Group], why: str) -> None:
        """One entry of `model`: the least-pressured group, unless one it holds now (`spare`) is within τ."""
        best = self._least_pressured(model, w)
        here = next((g for g in spare if self._fits(model, g)), None)
        if here is not None and (best is None or self._pressure_after(here, model, w) <= self._pressure_after(
                best, model, w) * (1 + self.p.move_threshold)):
            best = here
        if best is None:
            self.draft.reasons.append(f"no GPU has room for {model.name}: it waits for memory")
            return
        moved = here is not None and best != here
        if best in spare:
            spare.remove(best)
        elif spare:
            spare.pop(0)  # this entry leaves one of the groups it held
        self._place(model, best, w, f"{why}: KV pressure {self._pressure_after(best, model, w):.3g} is the "
                                    f"least{' (moved past τ)' if moved else ''}")

    def _replicas_needed(self, model: ServedModel, d: ModelDemand) -> int:
        """Replicas so that none runs above REPLICA_UTILISATION of what one serves on the best pool."""
        best = 0.0
        for pool in self.inventory.pools:
            tp = self.inventory.smallest_tp(model, pool)
            if tp is not None:
                lat = self.p.latency.get(model.arch, self.inventory.gpu_type_of(pool), tp)
                best = max(best, replica_capacity_per_s(lat, d, kv_tokens=self.inventory.kv_tokens(model, pool, tp),
                                                        tpot_s=self.tpot_s))
        return max(1, math.ceil(d.rate_per_s / (REPLICA_UTILISATION * best))) if best > 0 else 1

    def keep_current(self) -> None:
        """Between global passes: keep every replica of the current plan that is still on healthy GPUs."""
        assert self.prev is not None
        reps = self._current_reps()
        count = Counter(r.model for r, _ in reps)
        for rep, group in reps:
            model = self.fleet.model(rep.model)
            if self._fits(model, group):
                w = self._weighted_rate(model, self.observed[rep.model]) / count[rep.model]
                self._place(model, group, w, "kept", keep=rep)
        last = _last_global_s(self.prev)
        if last is not None:
            self.draft.reasons.append(f"{GLOBAL_MARK}{last:.3f} (carried)")

    # -- triggers --------------------------------------------------------------------------------------------------
    def evict_idle(self) -> None:
        """Evict models idle ≥ 45 s whose GPU is memory tight (weights to host memory)."""
        for rep in list(self.draft.replicas.values()):
            if self._idle_for(rep) >= self.p.idle_evict_s and any(self._tight(g) for g in rep.gpu_ids):
                self._unplace(rep, f"{rep.model} idle {self._idle_for(rep):.0f} s on a memory-tight GPU: evicted")

    def activate_on_demand(self) -> None:
        """Activate every model that has requests waiting but no replica, on the least-pressured GPU that fits,
        evicting idle models (≥ 45 s) from it when memory is short."""
        waiting = [g.model for g in self.state.groups if g.replica_id is None]
        waiting += [e.model for e in self.state.events
                    if e.kind == EventKind.REQUEST_FOR_INACTIVE_MODEL and e.model is not None]
        for name in dict.fromkeys(waiting):
            if name in self.fleet.model_names and not self.draft.replicas_of(name):
                self._activate(self.fleet.model(name))

    def _activate(self, model: ServedModel) -> None:
        w = self._weighted_rate(model, self.observed[model.name])
        best = self._least_pressured(model, w)
        if best is None:
            self._make_room(model)
            best = self._least_pressured(model, w)
        if best is None:
            self.draft.reasons.append(f"{model.name} requested but no GPU can hold it, even after idle evictions")
            return
        self._place(model, best, w, "activation on demand: a request arrived for an inactive model")

    def _make_room(self, model: ServedModel) -> None:
        """Evict idle models (longest idle first) until some GPU group can hold `model`."""
        idle = sorted((r for r in self.draft.replicas.values() if self._idle_for(r) >= self.p.idle_evict_s),
                      key=lambda r: -self._idle_for(r))
        for rep in idle:
            self._unplace(rep, f"{rep.model} idle {self._idle_for(rep):.0f} s: evicted to make room for "
                               f"{model.name}")
            if self._least_pressured(model, 0.0) is not None:
                return

    # -- pressure --------------------------------------------------------------------------------------------------
    def _weighted_rate(self, model: ServedModel, d: ModelDemand) -> float:
        """Token rate × KV bytes per token ÷ TPOT SLO (bytes per s², Prism's weighted request rate)."""
        return d.tokens_per_s * model.kv_bytes_per_token / self.tpot_s

    def _pressure(self, gpu_id: str, extra_w: float = 0.0, extra_weights: float = 0.0) -> float:
        load = sum(self.weighted.get(r.replica_id, 0.0) / r.tp for r in self.draft.replicas_on(gpu_id)) + extra_w
        room = self.ledger.kv_room_bytes(gpu_id) - extra_weights
        return load / room if room > 0 else float("inf")

    def _pressure_after(self, group: Group, model: ServedModel, w: float) -> float:
        tp = len(group.gpu_ids)
        return max(self._pressure(g, w / tp, model.arch.weight_bytes / tp) for g in group.gpu_ids)

    def _least_pressured(self, model: ServedModel, w: float) -> Group | None:
        """The group with the least pressure after adding `w`, among those that fit and hold no replica of the
        model yet (a model's replicas are anti-affine)."""
        best, best_p = None, float("inf")
        taken = {g for r in self.draft.replicas_of(model.name) for g in r.gpu_ids}
        for group in self._groups(model):
            if self._fits(model, group) and not taken & set(group.gpu_ids):
                p = self._pressure_after(group, model, w)
                if p < best_p - 1e-15:
                    best, best_p = group, p
        return best

    def _groups(self, model: ServedModel) -> list[Group]:
        """Node-aligned GPU groups at the smallest TP that fits each pool."""
        out = []
        for pool in self.inventory.pools:
            tp = self.inventory.smallest_tp(model, pool)
            if tp is None:
                continue
            for gpus in self.inventory.nodes_of(pool).values():
                ids = [g.gpu_id for g in gpus]
                out.extend(Group(pool, tuple(ids[i:i + tp])) for i in range(0, len(ids) - tp + 1, tp))
        return out

    def _fits(self, model: ServedModel, group: Group) -> bool:
        return self.ledger.can_place(model, group.gpu_ids, len(group.gpu_ids))

    def _tight(self, gpu_id: str) -> bool:
        w = self.state.worker(gpu_id)
        return w is not None and w.kv_pages_total > 0 and w.kv_pages_used >= TIGHT_KV_FRACTION * w.kv_pages_total

    def _idle_for(self, rep: Replica) -> float:
        s = self.status.get(rep.replica_id)
        if s is None or s.num_running or s.num_waiting or s.activating_until_s is not None:
            return 0.0
        last = s.last_request_s if s.last_request_s is not None else self._placed_at(rep)
        return self.state.time_s - last

    def _placed_at(self, rep: Replica) -> float:
        return self.prev.created_at_s if self.prev is not None else self.state.time_s

    # -- bookkeeping -----------------------------------------------------------------------------------------------
    def _current_reps(self) -> list[tuple[Replica, Group]]:
        healthy = set(self.state.healthy_gpu_ids)
        reps = self.prev.replicas if self.prev else ()
        return [(r, Group(r.pool, r.gpu_ids)) for r in reps if set(r.gpu_ids) <= healthy]

    def _current_groups(self) -> dict[str, list[Group]]:
        out: dict[str, list[Group]] = {}
        for r, g in self._current_reps():
            out.setdefault(r.model, []).append(g)
        return out

    def _place(self, model: ServedModel, group: Group, w: float, reason: str, keep: Replica | None = None) -> None:
        tp = len(group.gpu_ids)
        self.ledger.place(model, group.gpu_ids, tp)
        self.weighted[replica_id(model.name, group.gpu_ids)] = w
        if keep is not None:
            self.draft.keep(keep, kv_weight=max(w, 1e-9))
            return
        self.draft.add_replica(model.name, group.pool, group.gpu_ids, tp, reason=reason, kv_weight=max(w, 1e-9))

    def _unplace(self, rep: Replica, reason: str) -> None:
        self.ledger.remove(self.fleet.model(rep.model), rep.gpu_ids, rep.tp)
        self.weighted.pop(rep.replica_id, None)
        self.draft.remove(rep.replica_id)
        self.draft.reasons.append(reason)

