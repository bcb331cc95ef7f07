"""`qlm`: request groups in per-instance virtual queues, a mean waiting-time estimate, EDF reordering, load
balancing and model swapping — replanning only when a violation is predicted.

Source: A. Patke et al., "Queue Management for SLO-Oriented Large Language Model Serving", SoCC 2024
(arXiv 2407.00047), and the authors' public code (QLM-project/QLM: `Scheduler.check_violation`, `_reorder_edf`).
What it does, and what this port keeps:

- Requests are grouped by (model, SLO class); every serving *instance* (a fixed GPU group running one model at a
  time) has a virtual queue of groups, whose order is execution order.
- Request Waiting Time estimator: walking a queue, a group waits for the output tokens of everything ahead of it
  (and its own) ÷ the token throughput of (model, GPU), plus a model-swap time whenever the model changes. The
  public code uses a constant mean output length per model (the paper's CLT normal version adds a variance term);
  we use the observed per-model mean — it overestimates for few groups and underestimates on heavy tails.
- Reactive: the plan changes only when the estimate predicts that some group misses its TTFT deadline (or when a
  model has waiting requests and no instance). Then the global scheduler runs.
- Global scheduler: QLM's position-indexed MILP (binary "group i in slot k of instance g", hard completion ≤ SLO,
  minimise slack) does not scale — with HiGHS 10 groups take 10–16 s and 30 groups find nothing — so, like the
  paper when the solver fails, we take the **EDF path**: every virtual queue is reordered earliest deadline first,
  then the LLM Serving Operations follow from the new order:
  * load balancing (non-preemptive): a group still predicted to miss moves — waiting requests only — to another
    instance of its model where it meets its deadline;
  * model swapping: a group that no instance of its model can serve in time (or whose model has no instance) gets
    an instance swapped to its model: the one where it would finish earliest, counting the swap time and the
    displaced model's waiting groups, which move to that model's other instances (an instance whose model has no
    other instance keeps it while it has waiting work);
  * eviction: on an instance where a group with an earlier deadline reaches the head, running requests of
    lower-priority classes are preempted (KV swapped to host: QLM's GPU-CPU state swap).

Simplifications (docs/baselines.md): instances are the whole-GPU replicas of the initial sizing (every GPU used,
smallest TP that fits); TTFT deadlines only (as QLM); the swap time is the LatencyModel's host → GPU weight load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.actions import EvictRequests, MigrateRequests, PreemptMode
from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.plan import Plan, SolverStats
from core.state import EventKind, FleetState, RequestGroup
from optimizers.baselines.demand import (
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    ModelDemand,
    expected_demand,
    observed_demand,
    replica_capacity_per_s,
)
from optimizers.baselines.draft import PlanDraft, Step, replica_id
from optimizers.baselines.inventory import Inventory
from optimizers.baselines.sizing import size_replicas


@dataclass
class Instance:
    """A fixed GPU group serving one model at a time, with its virtual queue of request groups."""

    pool: str
    gpu_ids: tuple[str, ...]
    tp: int
    model: str
    queue: list[RequestGroup] = field(default_factory=list)  # waiting at its replica, in virtual-queue order
    waiting_swap: list[RequestGroup] = field(default_factory=list)  # groups of other models queued for a swap
    running: int = 0
    activating: bool = False  # its replica is still loading weights

    @property
    def replica_id(self) -> str:
        return replica_id(self.model, self.gpu_ids)


class QLMPlanner:
    """QLM's virtual-queue scheduler (EDF path), reactive to predicted SLO violations."""

    name = "qlm"
    subscriptions: frozenset[EventKind] = frozenset({
        EventKind.SLO_VIOLATION_PREDICTED, EventKind.REQUEST_FOR_INACTIVE_MODEL, EventKind.QUEUE_BUILDUP,
        EventKind.GPU_REMOVED,
    })

    def __init__(self, latency: LatencyBook | None = None) -> None:
        self.latency = latency or LatencyBook()

    def plan(self, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None, budget_s: float) -> Plan:
        started = time.perf_counter()
        draft = PlanDraft(self.name, fleet, state, self.latency, queue_rule="fcfs")
        prev = state.current_plan if state.current_plan and state.current_plan.policy == self.name else None
        if prev is None:
            self._initial(draft, fleet, state, scenarios)
            status = "heuristic"
        else:
            status = _Scheduler(self, fleet, state, draft, prev).run()
        return draft.build(SolverStats(name="qlm-edf", status=status, time_s=time.perf_counter() - started))

    def _initial(self, draft: PlanDraft, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None) -> None:
        """Instances: every GPU, in whole-GPU replicas; each starts with a model, the busiest getting more."""
        inventory = Inventory(fleet, state)
        demand = expected_demand(fleet, state, scenarios)
        sized, reasons = size_replicas(fleet, inventory, self.latency, demand, target_utilization=0.0,
                                       fill_all=True)
        for s in sized:
            draft.add_replica(s.model, s.pool, s.gpu_ids, s.tp, reason=f"instance starts with {s.model}")
            draft.routing.setdefault(s.model, {})[replica_id(s.model, s.gpu_ids)] = routing_weight(
                fleet, self.latency, s.model, s.pool, s.tp)
        draft.reasons.extend(reasons)
        draft.reasons.append(f"{len(sized)} instances, each serving one model at a time")


def _edf(g: RequestGroup) -> tuple[float, float, str]:
    """Earliest deadline first; ties by arrival, then id (deterministic)."""
    return (g.deadline_s, g.earliest_arrival_s, g.group_id)


def token_throughput(fleet: FleetSpec, latency: LatencyBook, d: ModelDemand, pool: str, tp: int) -> float:
    """Output tokens per second a `tp`-GPU instance of `pool` produces for a model at its largest batch (QLM's
    per-(model, GPU) throughput constant)."""
    m = fleet.model(d.model)
    gpu = fleet.pool(pool).gpu
    kv = fleet.fit(m, gpu, tp).kv_capacity_tokens
    return replica_capacity_per_s(latency.get(m.arch, gpu, tp), d, kv_tokens=kv, tpot_s=None) * d.output_tokens


def routing_weight(fleet: FleetSpec, latency: LatencyBook, model: str, pool: str, tp: int) -> float:
    """A replica's share of its model's new requests: its token throughput at default lengths — a property of the
    hardware, so routing changes only when instances do."""
    return token_throughput(fleet, latency, ModelDemand(model, 0.0, DEFAULT_PROMPT_TOKENS, DEFAULT_OUTPUT_TOKENS),
                            pool, tp)


class _Scheduler:
    """One QLM scheduling round over the instances of the current plan."""

    def __init__(self, planner: QLMPlanner, fleet: FleetSpec, state: FleetState, draft: PlanDraft,
                 prev: Plan) -> None:
        self.p = planner
        self.fleet = fleet
        self.state = state
        self.draft = draft
        self.prev = prev
        self.demand = observed_demand(fleet, state)
        self.instances = self._instances()
        self.unplaced: list[RequestGroup] = [g for g in state.groups if g.replica_id is None]
        self.inventory = Inventory(fleet, state)
        self._place_groups()

    def run(self) -> str:
        triggered = bool(self.unplaced) or self.violations()
        if triggered:
            self.reorder_edf()
            self.load_balance()
            self.swap_models()
            self.evict()
        self._emit(triggered)
        return "heuristic" if triggered else "unchanged"

    # -- state -----------------------------------------------------------------------------------------------------
    def _instances(self) -> list[Instance]:
        healthy = set(self.state.healthy_gpu_ids)
        status = {r.replica_id: r for w in self.state.workers for r in w.replicas}
        out = []
        for r in self.prev.replicas:
            if set(r.gpu_ids) <= healthy:
                s = status.get(r.replica_id)
                out.append(Instance(r.pool, r.gpu_ids, r.tp, r.model, running=s.num_running if s else 0,
                                    activating=s is not None and s.activating_until_s is not None))
        return out

    def _place_groups(self) -> None:
        """Virtual queues: each waiting group on its instance, in the current plan's order, then by arrival."""
        by_rid = {i.replica_id: i for i in self.instances}
        for g in sorted(self.state.groups, key=lambda g: (g.earliest_arrival_s, g.group_id)):
            inst = by_rid.get(g.replica_id) if g.replica_id is not None else None
            if inst is not None:
                inst.queue.append(g)
        for inst in self.instances:
            order = {gid: k for k, gid in enumerate(self.prev.queues.get(inst.replica_id, ()))}
            inst.queue.sort(key=lambda g: order.get(g.group_id, len(order)))

    # -- request waiting time estimator ----------------------------------------------------------------------------
    def token_throughput(self, model: str, inst: Instance) -> float:
        return token_throughput(self.fleet, self.p.latency, self.demand[model], inst.pool, inst.tp)

    def swap_s(self, model: str, inst: Instance) -> float:
        m = self.fleet.model(model)
        return self.p.latency.get(m.arch, self.fleet.pool(inst.pool).gpu, inst.tp).activate_from_host_s

    def group_s(self, g: RequestGroup, inst: Instance) -> float:
        return g.num_requests * self._demand(g.model).output_tokens / self.token_throughput(g.model, inst)

    def finish_times(self, inst: Instance, queue: list[RequestGroup] | None = None) -> list[float]:
        """Estimated time (absolute) at which each group of the queue is done waiting, in queue order."""
        t = self.state.time_s + inst.running * self._demand(inst.model).output_tokens / 2 / max(
            self.token_throughput(inst.model, inst), 1e-9)
        model, out = inst.model, []
        for g in inst.queue if queue is None else queue:
            if g.model != model:
                t += self.swap_s(g.model, inst)
                model = g.model
            t += self.group_s(g, inst)
            out.append(t)
        return out

    def late(self, inst: Instance) -> list[RequestGroup]:
        return [g for g, t in zip(inst.queue, self.finish_times(inst)) if t > g.deadline_s]

    def violations(self) -> bool:
        return any(self.late(i) for i in self.instances)

    # -- LLM serving operations ------------------------------------------------------------------------------------
    def reorder_edf(self) -> None:
        for inst in self.instances:
            inst.queue.sort(key=_edf)

    def load_balance(self) -> None:
        """Move late groups (waiting requests only) to another instance of their model that meets the deadline."""
        for inst in self.instances:
            for g in self.late(inst):
                target = self._best_instance(g, same_model=True, exclude=inst)
                if target is not None and self._finish_if_added(g, target) <= g.deadline_s:
                    inst.queue.remove(g)
                    self._enqueue(g, target)
                    self.draft.steps.append(Step(inst.gpu_ids[0], MigrateRequests(
                        from_replica_id=inst.replica_id, to_replica_id=target.replica_id, group_ids=(g.group_id,)),
                        f"qlm: load balancing — {g.group_id} would miss its deadline here, not there"))

    def swap_models(self) -> None:
        """Model swapping, for two kinds of groups:

        - a group whose model has no instance joins, in EDF order, the virtual queue of the instance where it would
          start first, swap time included; the swap happens when it reaches the head (the groups before it there
          have been served), as in QLM;
        - a late group that no instance of its model can serve in time takes an instance with nothing waiting,
          whose model keeps another instance, if it then meets its deadline (a swap that only moves lateness from
          one model to another is not made: under overload swapping cannot add capacity, only cost it).
        """
        swapped: set[int] = set()
        for g in sorted(self.unplaced, key=_edf):
            if any(i.model == g.model for i in self.instances):
                continue  # its model has (or is getting) an instance: the group is routed there once it serves
            found = self._swap_target(g, swapped)
            if found is None:
                continue
            target, ahead = found
            if ahead:
                target.waiting_swap.append(g)
                self.draft.reasons.append(f"qlm: {g.group_id} waits on {target.gpu_ids[0]} behind {len(ahead)} "
                                          f"group(s) of {target.model}; the swap follows them")
                continue
            self._swap(target, g)
            swapped.add(id(target))
        late = [g for inst in self.instances for g in self.late(inst) if self._no_better(g)]
        for g in sorted(dict.fromkeys(late), key=_edf):
            target = self._idle_target(g, swapped)
            if target is not None:
                self._swap(target, g)
                swapped.add(id(target))

    def evict(self) -> None:
        """Preempt running lower-priority work where a more urgent group heads the virtual queue and is late."""
        for inst in self.instances:
            late = self.late(inst)
            if not inst.queue or not inst.running or inst.queue[0] not in late:
                continue
            head = self.fleet.slo_class(inst.queue[0].slo_class)
            lower = tuple(c.name for c in self.fleet.slo_classes if c.priority > head.priority)
            if not lower:
                continue
            # Name the running requests when the state lists them; otherwise evict by class.
            listed = [r for r in self.state.running if r.replica_id == inst.replica_id]
            ids = tuple(r.request_id for r in listed if r.slo_class in lower)
            if listed and not ids:
                continue
            args = EvictRequests(replica_id=inst.replica_id, request_ids=ids, slo_classes=() if ids else lower,
                                 mode=PreemptMode.SWAP)
            self.draft.steps.append(Step(inst.gpu_ids[0], args, f"qlm: eviction — {inst.queue[0].group_id} heads "
                                                                 f"the queue and would miss its deadline"))

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _demand(self, model: str) -> ModelDemand:
        return self.demand[model]

    def _finish_if_added(self, g: RequestGroup, inst: Instance) -> float:
        queue = sorted(inst.queue + [g], key=_edf)
        return self.finish_times(inst, queue)[queue.index(g)]

    def _best_instance(self, g: RequestGroup, *, same_model: bool, exclude: Instance | None = None) -> Instance | None:
        cands = [i for i in self.instances
                 if i is not exclude and not i.activating and (i.model == g.model or not same_model)]
        return min(cands, key=lambda i: self._finish_if_added(g, i), default=None)

    def _no_better(self, g: RequestGroup) -> bool:
        return not any(i.model == g.model and self._finish_if_added(g, i) <= g.deadline_s for i in self.instances)

    def _enqueue(self, g: RequestGroup, inst: Instance) -> None:
        inst.queue.append(g)
        inst.queue.sort(key=_edf)

    def _candidates(self, g: RequestGroup, swapped: set[int]) -> list[Instance]:
        """Instances that could swap to `g`'s model: another model, not swapped or loading now, big enough."""
        model = self.fleet.model(g.model)
        return [i for i in self.instances
                if i.model != g.model and id(i) not in swapped and not i.activating
                and i.tp in self.inventory.fitting_tps(model, i.pool)]

    def _swap_target(self, g: RequestGroup, swapped: set[int]) -> tuple[Instance, list[RequestGroup]] | None:
        """The instance where `g` would start first after a swap, and the groups it must wait for there
        (instances whose model keeps another instance preferred, so no model is left without one)."""
        best: tuple[tuple[bool, float], Instance, list[RequestGroup]] | None = None
        for inst in self._candidates(g, swapped):
            ahead = [x for x in inst.queue + inst.waiting_swap if _edf(x) < _edf(g)]
            start = (self.finish_times(inst, ahead)[-1] if ahead else self.state.time_s) + self.swap_s(g.model, inst)
            key = (not self._has_other(inst), start)
            if best is None or key < best[0]:
                best = (key, inst, ahead)
        return None if best is None else (best[1], best[2])

    def _idle_target(self, g: RequestGroup, swapped: set[int]) -> Instance | None:
        """An instance with nothing waiting, whose model keeps another instance, where `g` meets its deadline."""
        for inst in self._candidates(g, swapped):
            if inst.queue or inst.waiting_swap or not self._has_other(inst):
                continue
            # finish_times counts the running work's drain, the swap (another model) and the group's own tokens.
            if self.finish_times(inst, [g])[0] <= g.deadline_s:
                return inst
        return None

    def _has_other(self, inst: Instance) -> bool:
        return any(i is not inst and i.model == inst.model for i in self.instances)

    def _swap(self, inst: Instance, g: RequestGroup) -> None:
        old_rid, old_model = inst.replica_id, inst.model
        displaced, inst.queue = inst.queue, []
        inst.model, inst.running = g.model, 0
        for d in displaced:
            target = self._best_instance(d, same_model=True, exclude=inst)
            if target is not None:
                self._enqueue(d, target)
                self.draft.steps.append(Step(inst.gpu_ids[0], MigrateRequests(
                    from_replica_id=old_rid, to_replica_id=target.replica_id, group_ids=(d.group_id,)),
                    f"qlm: {old_model} leaves {inst.gpu_ids[0]} for {g.model}; its waiting group moves"))
        if g in self.unplaced:
            self.unplaced.remove(g)
        for other in self.instances:
            if g in other.queue:
                other.queue.remove(g)
        inst.queue.append(g)
        self.draft.reasons.append(f"model swap on {inst.gpu_ids[0]}: {old_model} → {g.model} for {g.group_id}")

    # -- output ----------------------------------------------------------------------------------------------------
    def _emit(self, reordered: bool) -> None:
        for inst in self.instances:
            prev = self.prev.replica(inst.replica_id)
            if prev is not None:
                self.draft.keep(prev)
            else:
                self.draft.add_replica(inst.model, inst.pool, inst.gpu_ids, inst.tp,
                                       reason=f"model swap: {inst.model} needed for a group predicted to miss")
            self.draft.routing.setdefault(inst.model, {})[inst.replica_id] = routing_weight(
                self.fleet, self.p.latency, inst.model, inst.pool, inst.tp)
            if reordered and inst.queue:
                self.draft.queues[inst.replica_id] = tuple(g.group_id for g in inst.queue)
            elif inst.replica_id in self.prev.queues:
                self.draft.queues[inst.replica_id] = self.prev.queues[inst.replica_id]
        if reordered:
            self.draft.reasons.append("predicted SLO violation: virtual queues reordered earliest deadline first")
