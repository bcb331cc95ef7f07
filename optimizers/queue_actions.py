"""From a fleet state to queue decisions and back to plan actions: the queue planner's adapter.

Builds `GroupJob`s from the waiting `RequestGroup`s (lengths from a `LengthModel`: by default the scenario set's
per-model mean output with a coefficient of variation of 1), `Server`s from the target replicas (token rate = SLO
capacity × mean output; running work re-estimated), runs `queues.order_groups`, and turns the result into
`set_queue_order`, `migrate_requests` and `evict_requests` actions with reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.actions import EvictRequests, MigrateRequests, PreemptMode, Residency, SetQueueOrder
from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.state import FleetState
from optimizers.placement.packing import PlacedReplica
from optimizers.queues import (
    GroupJob,
    LengthModel,
    QueueSettings,
    Server,
    order_groups,
    residual_tokens,
    violation_probabilities,
)


@dataclass
class QueuePlan:
    """Orders per replica, and the migrations and evictions to carry out, each with its reason."""

    orders: dict[str, tuple[str, ...]] = field(default_factory=dict)
    migrations: list[tuple[MigrateRequests, str]] = field(default_factory=list)
    evictions: list[tuple[EvictRequests, str]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    name: str = "edf+local-search"
    model_of: dict[str, str] = field(default_factory=dict)
    leaders: dict[str, str] = field(default_factory=dict)  # replica id → the worker that runs it (its leader GPU)

    def emit(self, b, route: dict[str, int]) -> None:
        """Append the actions; each waits for its model's routing change in this plan, if any."""
        for rid, groups in sorted(self.orders.items()):
            if not groups:  # nothing waits there: the replica's own order stands
                continue
            deps = [route[self.model_of[rid]]] if self.model_of.get(rid) in route else []
            b.add(self.leader_of(rid), SetQueueOrder(replica_id=rid, group_ids=groups),
                  f"{rid}: pull {len(groups)} group(s) in the order that minimises expected SLO misses", deps)
        for args, reason in self.migrations:  # a migration is carried out by the replica the requests leave
            b.add(self.leader_of(args.from_replica_id), args, reason)
        for args, reason in self.evictions:
            b.add(self.leader_of(args.replica_id), args, reason)

    def leader_of(self, replica_id: str) -> str:
        """The worker an action on a replica goes to; replica ids are `model@leader-gpu` where none is known."""
        return self.leaders.get(replica_id) or replica_id.split("@", 1)[-1]


def mean_length_model(scenarios: ScenarioSet, cv: float = 1.0) -> LengthModel:
    """Per-model mean output from the scenario set, variance (cv·mean)² per request, summed over the group."""
    means = dict(zip(scenarios.models, scenarios.mean_output_tokens))
    default = float(scenarios.mean_output_tokens.mean()) if len(means) else 256.0

    def predict(model: str, slo_class: str, num_requests: int, prompt_tokens: int) -> tuple[float, float]:
        mu = float(means.get(model, default))
        return num_requests * mu, num_requests * (cv * mu) ** 2

    return predict


def plan_queues(state: FleetState, fleet: FleetSpec, targets: list[PlacedReplica], rate_of: dict[str, float],
                scenarios: ScenarioSet, book: LatencyBook, settings: QueueSettings, *, budget_s: float,
                lengths: LengthModel | None = None) -> QueuePlan:
    """Queue decisions for the waiting groups on the target replicas (empty when nothing waits)."""
    leaders = {r.replica_id: r.gpu_ids[0] if r.gpu_ids else w.worker_id for w in state.workers for r in w.replicas}
    plan = QueuePlan(model_of={t.replica_id: t.model for t in targets},
                     leaders=leaders | {t.replica_id: t.gpu_ids[0] for t in targets})
    targets = serving_targets(state, targets)
    if not state.groups or not targets:
        return plan
    lengths = lengths or mean_length_model(scenarios)
    servers, late = _servers(state, fleet, targets, rate_of, lengths, book, settings)
    if late:
        plan.reasons.append(f"re-estimated {late} running request(s) past their predicted p99 output length")
    jobs = [_job(g, state, fleet, lengths, settings) for g in state.groups if any(s.model == g.model for s in servers)]
    jobs, best = order_groups(jobs, servers, budget_s=budget_s, settings=settings)
    plan.name = "edf+local-search" + ("+exact" if best.steps.get("exact") else "")
    for k, order in enumerate(best.orders):
        rid = servers[k].replica_id
        ids = list(dict.fromkeys(jobs[i].group_id.split("#")[0] for i in order))
        plan.orders[rid] = tuple(ids)
        for i in order:
            src = jobs[i].replica_id
            if src and src != rid and "#" not in jobs[i].group_id:
                plan.migrations.append((MigrateRequests(from_replica_id=src, to_replica_id=rid,
                                                        group_ids=(jobs[i].group_id,)),
                                        f"{jobs[i].group_id}: {rid} is predicted to meet more of its deadlines"))
        _evictions(plan, state, fleet, jobs, servers[k], order, book, settings)
    plan.reasons.append(f"queues: {len(jobs)} group(s) on {len(servers)} replica(s), expected misses "
                        f"{best.cost:.2f} (priority-weighted), {best.evaluations} evaluations, steps {best.steps}")
    return plan


def serving_targets(state: FleetState, targets: list[PlacedReplica]) -> list[PlacedReplica]:
    """The targets that serve requests now: reported active, loaded and not draining (all of them when no worker
    reports). Groups are ordered on these only: a replica still loading cannot take a migration (the simulator
    refused 80 such moves in a ten-minute run), and its model's requests wait at the router until it serves."""
    if not state.workers:
        return targets
    serving = {r.replica_id for w in state.workers if w.healthy for r in w.replicas
               if r.residency == Residency.ACTIVE and not r.draining
               and (r.activating_until_s is None or r.activating_until_s <= state.time_s)}
    return [t for t in targets if t.replica_id in serving]


def _servers(state, fleet, targets, rate_of, lengths, book, settings) -> tuple[list[Server], int]:
    busy: dict[str, float] = {}
    late = 0
    for r in state.running:
        mean, var = lengths(r.model, r.slo_class, 1, r.prompt_tokens)
        rest, past = residual_tokens(mean, var, r.generated_tokens, settings.p99_z)
        busy[r.replica_id] = busy.get(r.replica_id, 0.0) + rest
        late += past
    out = []
    for t in targets:
        model = fleet.model(t.model)
        lat = book.get(model.arch, next(p.gpu for p in fleet.pools if p.name == t.pool), t.tp)
        mean, _ = lengths(t.model, "", 1, 0)
        out.append(Server(t.replica_id, t.model, max(rate_of.get(t.replica_id, 0.0) * mean, 1.0),
                          busy.get(t.replica_id, 0.0), lat.activate_from_host_s))
    return out, late


def _job(g, state: FleetState, fleet: FleetSpec, lengths: LengthModel, settings: QueueSettings) -> GroupJob:
    mean, var = lengths(g.model, g.slo_class, g.num_requests, g.prompt_tokens)
    priority = fleet.slo_class(g.slo_class).priority
    return GroupJob(g.group_id, g.model, g.num_requests, mean, var, g.deadline_s - state.time_s,
                    settings.priority_weight_base ** (-priority), g.replica_id)


def _evictions(plan: QueuePlan, state: FleetState, fleet: FleetSpec, jobs, server: Server, order, book: LatencyBook,
               settings: QueueSettings) -> None:
    """Evict lower-priority running requests when the head group is predicted late; swap vs recompute by cost."""
    if not order:
        return
    p = violation_probabilities(jobs, server, order[:1], settings)[0]
    if p < settings.violation_to_evict:
        return
    head = next(g for g in state.groups if g.group_id == jobs[order[0]].group_id.split("#")[0])
    head_priority = fleet.slo_class(head.slo_class).priority
    victims = [r for r in state.running if r.replica_id == server.replica_id
               and fleet.slo_class(r.slo_class).priority > head_priority][: head.num_requests]
    if not victims:
        return
    model = fleet.model(server.model)
    pool = next(pl for pl in fleet.pools if server.replica_id.split("@")[-1].startswith(pl.name + "/"))
    lat = book.get(model.arch, pool.gpu, 1)
    context = sum(r.prompt_tokens + r.generated_tokens for r in victims) // len(victims)
    swap_s, recompute_s = 2 * lat.kv_swap_s(context), lat.prefill_s(context)
    mode = PreemptMode.SWAP if swap_s < recompute_s else PreemptMode.RECOMPUTE
    plan.evictions.append((EvictRequests(replica_id=server.replica_id, request_ids=tuple(r.request_id for r in victims),
                                         mode=mode),
                           (f"{head.group_id} misses its deadline with p={p:.2f}; evict {len(victims)} lower-priority "
                            f"request(s) by {mode.value} ({swap_s:.3f} s swap vs {recompute_s:.3f} s recompute)")))
