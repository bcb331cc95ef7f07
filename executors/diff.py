"""Plan diff: what must still happen, given what the workers and the router report at execution time.

A plan's actions were computed against the state its planner saw. By the time the executor runs them, the fleet may
have moved on (a worker restarted and lost its replicas, a replica died, an earlier plan already did part of the
work). `diff` therefore

- drops the plan's actions whose effect is already observed (each with the reason, so it can be logged),
- adds the actions the plan's target state needs but its action list lacks (drift), with reasons that start with
  "executor:" and seqs derived from their content (`drift_seq`): diffing the same plan again, after a crash or
  against a changed fleet, gives the same action the same idempotency key and never reuses a key for another,
- damps small changes (see `Damping`), and
- orders everything by `depends_on` completed with the make-before-break rules of `executors.ordering`.

The plan's target state is `Plan.replicas` (residency, TP group, KV share), `Plan.routing` (a model missing from
it is routed evenly over its active replicas) and `Plan.queues`. Replicas on host that the plan does not name are
left alone (keeping weights warm costs no GPU memory); a plan drops them by naming them with residency `cold`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.actions import (
    Action,
    ActionArgs,
    ActivateModel,
    DeactivateModel,
    ReconfigureParallelism,
    Residency,
    ResizeKV,
    SetQueueOrder,
    SetRouting,
)
from core.errors import InputError
from core.plan import Plan, Replica
from core.status import WorkerStatus
from executors.observed import GIB, ObservedFleet, ObservedReplica, Weights, normalise
from executors.ordering import order_actions

EXECUTOR_REASON = "executor: "
DRIFT_SEQ_BASE = 1_000_000  # planners number their actions below this; seqs from here on are the executor's
DRIFT_SEQ_SPAN = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Damping:
    """Thresholds below which a change is not worth an action, so that noise in the planner's output does not churn
    the fleet. Structural changes are never damped: a replica entering or leaving a model's routing, a KV limit
    appearing or disappearing, and a KV resize on a GPU that is about to load a model (the room may be needed).

    - routing: left alone while every replica's normalised share moves by less than `routing_min_share_change`;
    - KV limit: left alone while it moves by less than `max(kv_min_change_gib, kv_min_change_frac × current)`.
    """

    routing_min_share_change: float = 0.05
    kv_min_change_gib: float = 0.5
    kv_min_change_frac: float = 0.10

    def __post_init__(self) -> None:
        for name in ("routing_min_share_change", "kv_min_change_gib", "kv_min_change_frac"):
            value = getattr(self, name)
            if not 0 <= value < (1 if name != "kv_min_change_gib" else float("inf")):
                raise InputError(f"damping.{name}", value, "a number ≥ 0 (shares and fractions below 1)")

    def routing_is_close(self, current: Weights, target: Weights) -> bool:
        return set(current) == set(target) and all(
            _small(abs(current[r] - target[r]), self.routing_min_share_change) for r in target
        )

    def kv_is_close(self, current_gib: float | None, target_gib: float) -> bool:
        if current_gib is None:
            return False
        return _small(abs(target_gib - current_gib), max(self.kv_min_change_gib, self.kv_min_change_frac * current_gib))


DEFAULT_DAMPING = Damping()
NO_DAMPING = Damping(0.0, 0.0, 0.0)


def _small(change: float, threshold: float) -> bool:
    """Below the threshold; a change within float noise is no change even when damping is off."""
    return change < threshold or change <= 1e-9


@dataclass(frozen=True, slots=True)
class Satisfied:
    """A plan action the executor will not send, and why."""

    action: Action
    reason: str


@dataclass(frozen=True)
class Schedule:
    """The outcome of a diff: what to send, in order, and what the plan asked that is already true."""

    plan: Plan
    actions: tuple[Action, ...]  # to send; topological order; depends_on names only actions in this tuple
    satisfied: tuple[Satisfied, ...]  # plan actions whose effect is observed already
    added: frozenset[int]  # seqs of actions the executor added for drift

    @property
    def record(self) -> Plan:
        """The plan as the action log stores it: the plan's own actions as the planner wrote them, then the ones
        the executor added. (Structural dependencies are not stored: every execution derives them again.)"""
        drift = sorted((a for a in self.actions if a.seq in self.added), key=lambda a: a.seq)
        return self.plan.model_copy(update={"actions": self.plan.actions + tuple(drift)})

    def action(self, seq: int) -> Action:
        return next(a for a in self.actions if a.seq == seq)


def diff(
    observed: Sequence[WorkerStatus],
    plan: Plan,
    *,
    routing: Mapping[str, Mapping[str, float]] | None = None,
    damping: Damping = DEFAULT_DAMPING,
) -> Schedule:
    """Actions that take the observed fleet to `plan`'s target, ordered (see the module docstring).

    `routing` is the router's current model → replica → weight (None: unknown, so the plan's routing is sent).
    Raises InputError if the plan's own dependencies are inconsistent.
    """
    return _Differ(plan, ObservedFleet(observed, routing), damping).schedule()


def drift_seq(worker_id: str | None, args: ActionArgs) -> int:
    """The seq of an executor-added action: a digest of what it does and where, so that the same drift action
    keeps its idempotency key across executions. Below 2**31 (database integer columns)."""
    text = f"{worker_id}\x1f{args.model_dump_json()}"
    return DRIFT_SEQ_BASE + int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) % DRIFT_SEQ_SPAN


def target_key(args: ActionArgs) -> tuple[str, str] | None:
    """What an action sets, for matching the diff's changes against the plan's actions (None: not diffed)."""
    if isinstance(args, (ActivateModel, DeactivateModel, ReconfigureParallelism)):
        return ("residency", args.replica_id)
    if isinstance(args, ResizeKV):
        return ("kv", args.replica_id)
    if isinstance(args, SetRouting):
        return ("routing", args.model)
    if isinstance(args, SetQueueOrder):
        return ("queue", args.replica_id)
    return None


@dataclass(frozen=True, slots=True)
class _Change:
    worker_id: str | None
    args: ActionArgs
    reason: str


class _Differ:
    def __init__(self, plan: Plan, fleet: ObservedFleet, damping: Damping):
        # A plan read back from an action log's record carries the drift actions of an earlier execution: they
        # are derived again here (same seqs) if still needed, so only the planner's own actions are kept.
        own = tuple(a for a in plan.actions if a.seq < DRIFT_SEQ_BASE)
        self.plan = plan if len(own) == len(plan.actions) else plan.model_copy(update={"actions": own})
        self.fleet, self.damping = fleet, damping
        self.planned = {target_key(a.args) for a in own} - {None}
        self._used = {a.seq for a in own}

    def schedule(self) -> Schedule:
        added = [self._add(c) for c in self._residency_changes() if target_key(c.args) not in self.planned]
        makes = [a for a in self.plan.actions if _is_make(a) and self._make_satisfied(a) is None]
        makes += [a for a in added if _is_make(a)]
        made = {a.args.replica_id: a for a in makes}
        loading = {g for a in makes for g in a.args.gpu_ids}
        satisfied: list[Satisfied] = []
        kept: list[Action] = []
        for a in self.plan.actions:
            why = self._why_satisfied(a, made, loading)
            if why:
                satisfied.append(Satisfied(a, why))
            else:
                kept.append(a)
        later = self._kv_changes(made, loading) + self._routing_changes(kept + added) + self._queue_changes()
        added += [self._add(c) for c in later]
        done = frozenset(s.action.seq for s in satisfied)
        ordered = order_actions(kept + added, done=done, gpus_of=self._gpus_of())
        return Schedule(self.plan, ordered, tuple(satisfied), frozenset(a.seq for a in added))

    def _add(self, change: _Change) -> Action:
        seq = drift_seq(change.worker_id, change.args)
        while seq in self._used:  # a hash collision: vanishingly rare, resolved the same way every time
            seq += 1
        self._used.add(seq)
        return Action(plan_id=self.plan.plan_id, seq=seq, worker_id=change.worker_id, args=change.args,
                      revision=self.plan.generation, reason=change.reason)

    # -- changes the target state needs -------------------------------------------------------------------

    def _residency_changes(self) -> list[_Change]:
        changes: list[_Change] = []
        for r in self.plan.replicas:
            seen = self.fleet.replica(r.replica_id)
            if r.residency == Residency.ACTIVE:
                changes += self._make(r, seen)
            elif seen is not None and _colder(seen, r.residency):
                changes.append(_Change(seen.leader, DeactivateModel(model=r.model, replica_id=r.replica_id,
                                                                    to=r.residency),
                                       f"{EXECUTOR_REASON}{r.replica_id} is {seen.status.residency} on "
                                       f"{seen.leader}; the plan wants it {r.residency}"))
        named = {r.replica_id for r in self.plan.replicas}
        for seen in self.fleet.replicas:
            if seen.status.replica_id not in named and seen.is_serving_or_activating:
                changes.append(_Change(seen.leader, DeactivateModel(model=seen.status.model,
                                                                    replica_id=seen.status.replica_id),
                                       f"{EXECUTOR_REASON}{seen.status.replica_id} serves on {seen.leader} "
                                       "but is not in the plan"))
        return changes

    def _make(self, r: Replica, seen: ObservedReplica | None) -> list[_Change]:
        if self.fleet.active_as_planned(r):
            return []
        if seen is not None and seen.is_serving_or_activating:
            args = ReconfigureParallelism(replica_id=r.replica_id, model=r.model, tp=r.tp, gpu_ids=r.gpu_ids)
            return [_Change(seen.leader, args, f"{EXECUTOR_REASON}{r.replica_id} runs on "
                                              f"{seen.status.gpu_ids or (seen.leader,)}; the plan wants {r.gpu_ids}")]
        state = "not observed" if seen is None else f"{seen.status.residency} on {seen.leader}"
        args = ActivateModel(model=r.model, replica_id=r.replica_id, tp=r.tp, gpu_ids=r.gpu_ids,
                             kv_limit_gib=r.kv_share_gib)
        return [_Change(r.leader, args, f"{EXECUTOR_REASON}{r.replica_id} is {state}; the plan wants it active")]

    def _kv_changes(self, made: Mapping[str, Action], loading: set[str]) -> list[_Change]:
        changes = []
        for r in self.plan.replicas:
            seen = self.fleet.replica(r.replica_id)
            if (r.residency != Residency.ACTIVE or r.replica_id in made or ("kv", r.replica_id) in self.planned
                    or seen is None or not self.fleet.active_as_planned(r)):
                continue
            if not self._kv_settled(seen, r.kv_share_gib, loading):
                changes.append(_Change(r.leader, ResizeKV(replica_id=r.replica_id, kv_limit_gib=r.kv_share_gib),
                                       f"{EXECUTOR_REASON}{r.replica_id} has a KV limit of "
                                       f"{_gib(seen.kv_limit_gib)}; the plan wants {r.kv_share_gib:.2f} GiB"))
        return changes

    def _routing_changes(self, to_send: list[Action]) -> list[_Change]:
        moving = {a.args.model for a in to_send if _is_make(a) or isinstance(a.args, DeactivateModel)}
        models = set(self.plan.routing) | moving | {r.model for r in self.plan.replicas}
        if self.fleet.routing is not None:
            models |= set(self.fleet.routing)
        changes = []
        for model in sorted(models):
            target = self._target_routing(model)
            current = self.fleet.routing_of(model)
            if ("routing", model) in self.planned:
                continue
            if current is None and model not in self.plan.routing and model not in moving:
                continue
            if current is not None and self.damping.routing_is_close(current, target):
                continue
            changes.append(_Change(None, SetRouting(model=model, weights=target),
                                   f"{EXECUTOR_REASON}routing of {model} is {_shares(current)}; the plan's target "
                                   f"is {_shares(target)}"))
        return changes

    def _queue_changes(self) -> list[_Change]:
        changes = []
        for rid, groups in sorted(self.plan.queues.items()):
            replica = self.plan.replica(rid)
            if replica is None or ("queue", rid) in self.planned:
                continue
            changes.append(_Change(replica.leader, SetQueueOrder(replica_id=rid, group_ids=groups),
                                   f"{EXECUTOR_REASON}the plan orders {len(groups)} request groups on {rid}"))
        return changes

    def _target_routing(self, model: str) -> Weights:
        if model in self.plan.routing:
            return normalise(self.plan.routing[model])
        active = [r.replica_id for r in self.plan.replicas_of(model) if r.residency == Residency.ACTIVE]
        return normalise({rid: 1.0 for rid in active})

    # -- plan actions already satisfied -------------------------------------------------------------------

    def _why_satisfied(self, a: Action, made: Mapping[str, Action], loading: set[str]) -> str | None:
        args = a.args
        if isinstance(args, (ActivateModel, ReconfigureParallelism)):
            return self._make_satisfied(a)
        if isinstance(args, DeactivateModel):
            return self._break_satisfied(a, args)
        if isinstance(args, ResizeKV):
            return self._resize_satisfied(args, made, loading)
        if isinstance(args, SetRouting):
            current = self.fleet.routing_of(args.model)
            if current is not None and self.damping.routing_is_close(current, normalise(args.weights)):
                return f"routing of {args.model} is already {_shares(current)} (within damping)"
        return None

    def _make_satisfied(self, a: Action) -> str | None:
        args = a.args
        seen = self.fleet.replica(args.replica_id)
        if seen is None or not seen.is_serving_or_activating:
            return None
        gpus = seen.status.gpu_ids or (seen.leader,)
        if gpus == tuple(args.gpu_ids) and seen.status.tp == args.tp:
            return f"{args.replica_id} is already {seen.status.residency} on {gpus}"
        return None

    def _break_satisfied(self, a: Action, args: DeactivateModel) -> str | None:
        if a.worker_id not in self.fleet.workers:
            return None  # unobserved worker: we cannot tell
        seen = self.fleet.replica(args.replica_id)
        if seen is None:
            return f"{args.replica_id} is not on any observed worker"
        if not _colder(seen, args.to):
            return f"{args.replica_id} is already {seen.status.residency}"
        return None

    def _resize_satisfied(self, args: ResizeKV, made: Mapping[str, Action], loading: set[str]) -> str | None:
        make = made.get(args.replica_id)
        if make is not None and getattr(make.args, "kv_limit_gib", None) == args.kv_limit_gib:
            return f"the activation (seq {make.seq}) sets this limit"
        seen = self.fleet.replica(args.replica_id)
        if (make is None and seen is not None and seen.is_serving_or_activating
                and self._kv_settled(seen, args.kv_limit_gib, loading)):
            return f"KV limit of {args.replica_id} is {_gib(seen.kv_limit_gib)} (within damping)"
        return None

    def _kv_settled(self, seen: ObservedReplica, target_gib: float, loading: set[str]) -> bool:
        current = seen.kv_limit_gib
        if current is not None and abs(current - target_gib) < seen.kv_page_bytes / GIB:
            return True  # limits are kept in whole pages
        return seen.leader not in loading and self.damping.kv_is_close(current, target_gib)

    def _gpus_of(self) -> dict[str, tuple[str, ...]]:
        gpus = {s.status.replica_id: s.status.gpu_ids or (s.leader,) for s in self.fleet.replicas}
        return {**{r.replica_id: r.gpu_ids for r in self.plan.replicas}, **gpus}


_WARMTH = {Residency.ACTIVE: 2, Residency.HOST: 1, Residency.COLD: 0}


def _colder(seen: ObservedReplica, target: Residency) -> bool:
    """Whether reaching `target` needs a deactivation (an activation in progress counts as active)."""
    current = Residency.ACTIVE if seen.is_serving_or_activating else seen.status.residency
    return _WARMTH[current] > _WARMTH[target]


def _is_make(action: Action) -> bool:
    return isinstance(action.args, (ActivateModel, ReconfigureParallelism))


def _gib(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:.2f} GiB"


def _shares(weights: Weights | None) -> str:
    if weights is None:
        return "unknown"
    return "{" + ", ".join(f"{r}: {w:.2f}" for r, w in weights.items()) + "}" if weights else "nothing"
