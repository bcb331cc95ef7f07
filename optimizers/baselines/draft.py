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

KV memory: a replica's `kv_share_gib` is computed here. A GPU's room (usable memory − the weights of every replica
on it) is split among its replicas: each keeps one full-context sequence, the rest goes in proportion to the
`kv_weight` its planner gave it (MuxServe: rate × KV bytes per token; default equal). Replicas are activated
without a KV limit — the device's page pool is shared by whatever is resident — except TP > 1 replicas that share
their GPUs with another replica: a TP group reserves its KV on every member when it is activated, so it gets its
share as a limit (and a kept one is resized, before its new neighbour is activated).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from core.actions import (
    Action,
    ActionArgs,
    ActivateModel,
    DeactivateModel,
    Residency,
    ResizeKV,
    SetQueueOrder,
    SetRouting,
)
from core.catalog import GIB
from core.fleet import FleetSpec
from core.latency import LatencyBook
from core.plan import Plan, Replica, SolverStats, digest, make_plan_id
from core.state import FleetState

KV_SLACK = 0.02  # fraction of a GPU's KV room left unassigned when shares are split (page rounding)
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
    kv_weight: dict[str, float] = field(default_factory=dict)  # replica_id → weight of its KV share (default 1)
    _why: dict[str, str] = field(default_factory=dict)  # replica_id → reason it is activated

    # -- filling ---------------------------------------------------------------------------------------------------
    def add_replica(self, model: str, pool: str, gpu_ids: tuple[str, ...], tp: int, *, reason: str,
                    kv_weight: float = 1.0) -> Replica:
        """Place a replica (new, or the same as the current plan's: then it is kept, not re-activated)."""
        rid = replica_id(model, gpu_ids)
        gpu_type = self.fleet.pool(pool).gpu.name
        rep = Replica(replica_id=rid, model=model, pool=pool, gpu_type=gpu_type, gpu_ids=gpu_ids, tp=tp,
                      kv_share_gib=0.0)
        self.replicas[rid] = rep
        self.kv_weight[rid] = kv_weight
        self._why[rid] = reason
        return rep

    def keep(self, rep: Replica, *, kv_weight: float = 1.0) -> None:
        """Keep a replica of the current plan (its KV share is recomputed with its new neighbours)."""
        self.replicas[rep.replica_id] = rep
        self.kv_weight[rep.replica_id] = kv_weight
        self._why.setdefault(rep.replica_id, "kept from the current plan")

    def remove(self, rid: str) -> None:
        self.replicas.pop(rid, None)
        self.kv_weight.pop(rid, None)
        self._why.pop(rid, None)

    def replicas_of(self, model: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.model == model]

    def replicas_on(self, gpu_id: str) -> list[Replica]:
        return [r for r in self.replicas.values() if gpu_id in r.gpu_ids]

    # -- building --------------------------------------------------------------------------------------------------
    def build(self, solver: SolverStats, *, horizon_s: float = 0.0) -> Plan:
        """The Plan: replicas, routing (equal weights where the planner set none), queues and ordered actions."""
        self.replicas = _with_kv_shares(self.fleet, self.replicas, self.kv_weight, self.state.current_plan)
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
        # Diff against what the workers report, not against the previous plan: actions of a plan that a newer
        # plan superseded, or that failed, never happened.
        # A draining replica (reported so by its worker, or one the previous plan had already dropped: workers
        # report it active until its running requests finish) is neither deactivated again nor counted as
        # serving; a plan that wants it back activates it, which cancels the drain.
        live = {rid: r for rid, r in _live_replicas(self.state).items()
                if not r.draining and (prev is None or rid in prev_reps)}
        gone = [r for rid, r in sorted(live.items()) if rid not in self.replicas]
        new = [r for rid, r in sorted(self.replicas.items()) if rid not in live]
        for step in self.steps:  # phase 1
            seq.add(step.worker_id, step.args, step.reason)
        drain = self._drain_routing(seq, gone, prev_routing)  # phase 2
        deact = {}
        for r in gone:  # phase 3
            deps = (drain[r.model],) if r.model in drain else ()
            deact[r.replica_id] = seq.add(
                r.leader, DeactivateModel(model=r.model, replica_id=r.replica_id, to=Residency.HOST),
                f"{self.policy}: {r.model} leaves {', '.join(r.gpu_ids)}", deps)
        resized = self._resize_kept(seq, {rid: r for rid, r in prev_reps.items() if rid in live}, deact, gone)
        activated = {}
        for r in new:  # phase 4
            deps = tuple(deact[g.replica_id] for g in gone if set(g.gpu_ids) & set(r.gpu_ids))
            deps += tuple(n for rid, n in resized.items() if set(self.replicas[rid].gpu_ids) & set(r.gpu_ids))
            args = ActivateModel(model=r.model, replica_id=r.replica_id, tp=r.tp, gpu_ids=r.gpu_ids,
                                 kv_limit_gib=r.kv_share_gib if _limited(r, self.replicas.values()) else None)
            activated[r.replica_id] = seq.add(r.leader, args, f"{self.policy}: {self._why[r.replica_id]}", deps,
                                              duration_s=self._activation_s(r))
        for model, weights in sorted(routing.items()):  # phase 5
            if prev_routing.get(model) != weights:
                deps = tuple(activated[rid] for rid in sorted(weights) if rid in activated)
                seq.add(None, SetRouting(model=model, weights=weights),
                        f"{self.policy}: route {model} over {len(weights)} replica(s)", deps)
        self._order_queues(seq, new, activated, prev)  # phase 6

    def _resize_kept(self, seq: _Sequencer, prev_reps: dict[str, Replica], deact: dict[str, int],
                     gone: list[_Live]) -> dict[str, int]:
        """Kept TP replicas whose enforced KV limit changes get it before new neighbours arrive."""
        out = {}
        prev_all = list(prev_reps.values())
        for rid, r in sorted(self.replicas.items()):
            old = prev_reps.get(rid)
            if old is None or not _limited(r, self.replicas.values()):
                continue
            if _limited(old, prev_all) and abs(old.kv_share_gib - r.kv_share_gib) < 1e-6:
                continue
            deps = tuple(deact[g.replica_id] for g in gone if set(g.gpu_ids) & set(r.gpu_ids))
            out[rid] = seq.add(r.leader, ResizeKV(replica_id=rid, kv_limit_gib=r.kv_share_gib),
                               f"{self.policy}: {r.model} shares its GPUs; its KV share is {r.kv_share_gib:.1f} GiB",
                               deps)
        return out

    def _drain_routing(self, seq: _Sequencer, gone: list[_Live],
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


@dataclass(frozen=True, slots=True)
class _Live:
    """A replica a worker reports active (serving, loading or draining)."""

    replica_id: str
    model: str
    gpu_ids: tuple[str, ...]
    leader: str
    draining: bool


def _live_replicas(state: FleetState) -> dict[str, _Live]:
    return {
        r.replica_id: _Live(r.replica_id, r.model, r.gpu_ids or (w.worker_id,), w.worker_id, r.draining)
        for w in state.workers if w.healthy for r in w.replicas if r.residency == Residency.ACTIVE
    }


def _limited(rep: Replica, everyone: Iterable[Replica]) -> bool:
    """A TP > 1 replica sharing a GPU with another replica runs under a KV limit (see the module docstring)."""
    return rep.tp > 1 and any(o.replica_id != rep.replica_id and set(o.gpu_ids) & set(rep.gpu_ids) for o in everyone)


def _with_kv_shares(fleet: FleetSpec, replicas: dict[str, Replica], weights: dict[str, float],
                    prev: Plan | None) -> dict[str, Replica]:
    """Each replica with its KV share per GPU: the GPU's room after all weights, one full-context sequence each,
    the rest split by weight; a TP group gets the smallest of its members' shares. GPUs whose replicas are the
    same as in `prev` keep their shares (a static placement's shares never drift)."""
    on_gpu: dict[str, list[Replica]] = {}
    for r in replicas.values():
        for g in r.gpu_ids:
            on_gpu.setdefault(g, []).append(r)
    before: dict[str, set[str]] = {}
    for r in prev.replicas if prev else ():
        for g in r.gpu_ids:
            before.setdefault(g, set()).add(r.replica_id)
    kept = {r.replica_id: r.kv_share_gib * GIB for r in prev.replicas} if prev else {}
    share: dict[str, float] = {}
    for g, reps in on_gpu.items():
        unchanged = before.get(g) == {r.replica_id for r in reps}
        for r, mine in zip(reps, [kept[r.replica_id] for r in reps] if unchanged else _split_room(fleet, g, reps,
                                                                                                    weights)):
            share[r.replica_id] = min(share.get(r.replica_id, mine), mine)
    return {rid: r.model_copy(update={"kv_share_gib": max(share.get(rid, 0.0), 0.0) / GIB})
            for rid, r in replicas.items()}


def _split_room(fleet: FleetSpec, gpu_id: str, reps: list[Replica], weights: dict[str, float]) -> list[float]:
    models = [fleet.model(r.model) for r in reps]
    room = fleet.usable_bytes_per_gpu(fleet.pool_of_gpu(gpu_id).gpu) - sum(
        m.arch.weight_bytes / r.tp for m, r in zip(models, reps))
    floor = [m.max_context_tokens * m.arch.kv_bytes_per_token_per_gpu(r.tp) for m, r in zip(models, reps)]
    # Keep a little back: the engine rounds every share to whole KV pages.
    spare = max(room * (1 - KV_SLACK) - sum(floor), 0.0)
    total = sum(weights.get(r.replica_id, 1.0) for r in reps) or 1.0
    return [base + spare * weights.get(r.replica_id, 1.0) / total for r, base in zip(reps, floor)]
