"""`PlanDraft`: a baseline's target placement, turned into an immutable `Plan` with ordered, explained actions.

A planner fills a draft with the replicas it wants (new ones with the reason they exist, kept ones from the current
plan), per-model routing weights, a local queue rule or explicit group orders, and any extra steps (evictions,
migrations). `build()` diffs the draft against `state.current_plan` and orders the actions in phases whose
dependencies only point backwards, so a plan never deadlocks:

1. extra steps (evict, migrate) — they act on the current placement;
2. routing away from replicas that go, where the model keeps another replica (drain before deactivate);
3. deactivations of replicas that go (to host memory), after (2) for their model;
4. activations of new replicas, after any deactivation on a GPU they share (memory is freed first);
5. routing for every model whose weights changed, after its new replicas are active;
6. queue orders for new replicas and for changed explicit orders, after activation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.actions import (
    Action,
    ActionArgs,
    ActivateModel,
    DeactivateModel,
    Residency,
    SetQueueOrder,
    SetRouting,
)
from core.catalog import GIB
from core.fleet import FleetSpec
from core.latency import LatencyBook
from core.plan import Plan, Replica, SolverStats, digest, make_plan_id
from core.state import FleetState

QueueRule = str  # a local SetQueueOrder policy: "fcfs", "priority" or "edf"


def replica_id(model: str, gpu_ids: tuple[str, ...]) -> str:
    """Stable replica id: the model at its leader GPU (e.g. 'chat-8b@h100/0')."""
    return f"{model}@{gpu_ids[0]}"


@dataclass(frozen=True, slots=True)
class Step:
    """An action a planner wants besides the placement diff (evictions, migrations), with its reason."""

    worker_id: str | None
    args: ActionArgs
    reason: str


@dataclass
class PlanDraft:
    """A target state being assembled by one planner call. Build once with `build()`."""

    policy: str
    fleet: FleetSpec
    state: FleetState
    latency: LatencyBook
    queue_rule: QueueRule | None = None  # local rule set on every new replica; None: explicit orders only
    replicas: dict[str, Replica] = field(default_factory=dict)
    routing: dict[str, dict[str, float]] = field(default_factory=dict)  # model → replica_id → weight
    queues: dict[str, tuple[str, ...]] = field(default_factory=dict)  # replica_id → group ids (explicit)
    steps: list[Step] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    _why: dict[str, str] = field(default_factory=dict)  # replica_id → reason it is activated

    # -- filling ---------------------------------------------------------------------------------------------------
    def add_replica(self, model: str, pool: str, gpu_ids: tuple[str, ...], tp: int, *, kv_share_gib: float,
                    reason: str) -> Replica:
        """Place a replica (new, or the same as the current plan's: then it is kept, not re-activated)."""
        rid = replica_id(model, gpu_ids)
        gpu_type = self.fleet.pool(pool).gpu.name
        rep = Replica(replica_id=rid, model=model, pool=pool, gpu_type=gpu_type, gpu_ids=gpu_ids, tp=tp,
                      kv_share_gib=max(kv_share_gib, 0.0))
        self.replicas[rid] = rep
        self._why[rid] = reason
        return rep

    def keep(self, rep: Replica) -> None:
        """Keep a replica of the current plan as it is."""
        self.replicas[rep.replica_id] = rep
        self._why.setdefault(rep.replica_id, "kept from the current plan")

    def remove(self, rid: str) -> None:
        self.replicas.pop(rid, None)
        self._why.pop(rid, None)

    def replicas_of(self, model: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.model == model]

    def replicas_on(self, gpu_id: str) -> list[Replica]:
        return [r for r in self.replicas.values() if gpu_id in r.gpu_ids]

    # -- building --------------------------------------------------------------------------------------------------
    def build(self, solver: SolverStats, *, horizon_s: float = 0.0) -> Plan:
        """The Plan: replicas, routing (equal weights where the planner set none), queues and ordered actions."""
        routing = self._final_routing()
        prev = self.state.current_plan
        generation = self.state.generation
        inputs = digest(self.policy, self.state.time_s, sorted(self.replicas), sorted(routing.items()),
                        sorted(self.queues.items()), [g.group_id for g in self.state.groups],
                        [(e.kind, e.time_s, e.model) for e in self.state.events])
        plan_id = make_plan_id(self.fleet.name, self.policy, generation, inputs)
        actions = _Sequencer(plan_id, generation)
        self._order_actions(actions, prev, routing)
        return Plan(
            plan_id=plan_id, parent_id=prev.plan_id if prev else None, fleet=self.fleet.name, policy=self.policy,
            generation=generation, created_at_s=self.state.time_s, horizon_s=horizon_s, input_digest=inputs,
            replicas=tuple(self.replicas[r] for r in sorted(self.replicas)), routing=routing,
            queues=dict(self.queues), actions=tuple(actions.actions), solver=solver, reasons=tuple(self.reasons),
        )

    def _final_routing(self) -> dict[str, dict[str, float]]:
        routing: dict[str, dict[str, float]] = {}
        for model in dict.fromkeys(r.model for r in self.replicas.values()):
            ids = sorted(r.replica_id for r in self.replicas_of(model))
            given = self.routing.get(model, {})
            weights = {rid: float(given.get(rid, 0.0 if given else 1.0)) for rid in ids}
            if sum(weights.values()) <= 0:
                weights = {rid: 1.0 for rid in ids}
            routing[model] = weights
        return routing

    def _order_actions(self, seq: _Sequencer, prev: Plan | None, routing: dict[str, dict[str, float]]) -> None:
        prev_reps = {r.replica_id: r for r in prev.replicas} if prev else {}
        prev_routing = prev.routing if prev else {}
        healthy = set(self.state.healthy_gpu_ids)
        gone = [r for rid, r in sorted(prev_reps.items()) if rid not in self.replicas and r.leader in healthy]
        new = [r for rid, r in sorted(self.replicas.items()) if rid not in prev_reps]
        for step in self.steps:  # phase 1
            seq.add(step.worker_id, step.args, step.reason)
        drain = self._drain_routing(seq, gone, prev_routing)  # phase 2
        deact = {}
        for r in gone:  # phase 3
            deps = (drain[r.model],) if r.model in drain else ()
            deact[r.replica_id] = seq.add(
                r.leader, DeactivateModel(model=r.model, replica_id=r.replica_id, to=Residency.HOST),
                f"{self.policy}: {r.model} leaves {', '.join(r.gpu_ids)}", deps)
        activated = {}
        for r in new:  # phase 4
            deps = tuple(deact[g.replica_id] for g in gone if set(g.gpu_ids) & set(r.gpu_ids))
            # Every baseline shares the device's KV pool among its resident models (no per-model limit):
            # vLLM owns its GPUs, MuxServe's unified KV cache and Prism's kvcached pool are shared.
            args = ActivateModel(model=r.model, replica_id=r.replica_id, tp=r.tp, gpu_ids=r.gpu_ids)
            activated[r.replica_id] = seq.add(r.leader, args, f"{self.policy}: {self._why[r.replica_id]}", deps,
                                              duration_s=self._activation_s(r))
        for model, weights in sorted(routing.items()):  # phase 5
            if prev_routing.get(model) != weights:
                deps = tuple(activated[rid] for rid in sorted(weights) if rid in activated)
                seq.add(None, SetRouting(model=model, weights=weights),
                        f"{self.policy}: route {model} over {len(weights)} replica(s)", deps)
        self._order_queues(seq, new, activated, prev)  # phase 6

    def _drain_routing(self, seq: _Sequencer, gone: list[Replica],
                       prev_routing: dict[str, dict[str, float]]) -> dict[str, int]:
        out = {}
        for model in sorted({r.model for r in gone}):
            stay = {rid: w for rid, w in prev_routing.get(model, {}).items() if rid in self.replicas}
            if stay and sum(stay.values()) > 0:
                out[model] = seq.add(None, SetRouting(model=model, weights=stay),
                                     f"{self.policy}: drain {model} from replicas that go")
        return out

    def _order_queues(self, seq: _Sequencer, new: list[Replica], activated: dict[str, int],
                      prev: Plan | None) -> None:
        prev_queues = prev.queues if prev else {}
        for r in new:
            if self.queue_rule is not None and r.replica_id not in self.queues:
                seq.add(r.leader, SetQueueOrder(replica_id=r.replica_id, policy=self.queue_rule),  # type: ignore[arg-type]
                        f"{self.policy}: local queue rule {self.queue_rule}", (activated[r.replica_id],))
        for rid, groups in sorted(self.queues.items()):
            if rid in self.replicas and prev_queues.get(rid) != groups:
                deps = (activated[rid],) if rid in activated else ()
                seq.add(self.replicas[rid].leader, SetQueueOrder(replica_id=rid, policy="explicit", group_ids=groups),
                        f"{self.policy}: virtual queue order of {rid} ({len(groups)} groups)", deps)

    def _activation_s(self, r: Replica) -> float:
        model = self.fleet.model(r.model)
        lat = self.latency.get(model.arch, self.fleet.pool(r.pool).gpu, r.tp)
        worker = self.state.worker(r.leader)
        on_host = worker is not None and any(
            s.model == r.model and s.residency == Residency.HOST for s in worker.replicas)
        return lat.activate_from_host_s if on_host else lat.activate_from_cold_s


class _Sequencer:
    """Numbers actions in order and stamps them with the plan id and revision."""

    def __init__(self, plan_id: str, revision: int) -> None:
        self.plan_id = plan_id
        self.revision = revision
        self.actions: list[Action] = []

    def add(self, worker_id: str | None, args: ActionArgs, reason: str, depends_on: tuple[int, ...] = (), *,
            duration_s: float = 0.0) -> int:
        n = len(self.actions)
        self.actions.append(Action(plan_id=self.plan_id, seq=n, worker_id=worker_id, args=args,
                                   depends_on=tuple(sorted(set(depends_on))), revision=self.revision,
                                   reason=reason, expected_duration_s=duration_s))
        return n


def kv_share_gib(usable_bytes: float, weight_bytes: float) -> float:
    """KV memory per GPU left after the weights (what a replica may grow into in a shared pool)."""
    return max(usable_bytes - weight_bytes, 0.0) / GIB
