"""Dependencies between actions: the plan's own `depends_on` plus the structural rules of a safe rollout.

Rules, strongest first. A rule's edge is added only if it does not close a cycle with the edges already there, so
when two rules cannot both hold the weaker one gives way. Safety (never route to a replica that is not serving,
never load a model onto a GPU before the memory is freed) outranks availability (keep serving while moving):

1. plan `depends_on` (hard: a cycle here is an error in the plan);
2. routing after activation: a `set_routing` waits for the activation of every replica it sends traffic to;
3. lifecycle: every action on a replica (resize, queue order, evictions, swaps, migrations) happens after the
   replica's activation and before its deactivation;
4. free before load on one GPU: deactivations of other models on a GPU precede an activation there (memory);
5. KV resizes on a GPU after its deactivations and before its activations;
6. drain after re-routing: a replica is deactivated only after the routing changes that stop sending to it;
7. make-before-break: a model's replica is deactivated only after its new replicas on other GPUs are active
   (written only where rule 6 does not already imply it through a routing change).

Rules 6 and 7 give way only when GPUs with no free memory trade models (A moves to B's GPU and B to A's): one
model must then leave its GPU before its new replica is active, and is unavailable in between.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from graphlib import CycleError, TopologicalSorter

from core.actions import (
    Action,
    ActivateModel,
    DeactivateModel,
    MigrateRequests,
    ReconfigureParallelism,
    SetRouting,
)
from core.errors import InputError

Graph = dict[int, set[int]]  # seq → seqs it depends on
Edge = tuple[int, int]  # (dependent seq, dependency seq)

_MAKES = (ActivateModel, ReconfigureParallelism)


def order_actions(
    actions: Sequence[Action],
    *,
    done: frozenset[int] = frozenset(),
    gpus_of: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[Action, ...]:
    """`actions` with `depends_on` completed by the rules above, in an order that respects it (ties by seq).

    `done` are seqs of the plan that need no execution (their dependents may start at once). `gpus_of` maps a
    replica id to the GPUs it occupies now (for deactivations, whose arguments name only the leader).
    Raises InputError when the plan's own dependencies name an unknown seq or form a cycle.
    """
    graph = _plan_graph(actions, done)
    index = _Index(actions, gpus_of or {})
    for rule in (index.routing_after_make, index.lifecycle, index.free_before_load, index.resize_between,
                 index.drain_after_reroute, index.make_before_break):
        _add_rule(graph, list(rule()))
    by_seq = {a.seq: a for a in actions}
    return tuple(by_seq[s].model_copy(update={"depends_on": tuple(sorted(graph[s]))}) for s in _waves(graph))


def _plan_graph(actions: Sequence[Action], done: frozenset[int]) -> Graph:
    seqs = {a.seq for a in actions}
    graph: Graph = {a.seq: set() for a in actions}
    for a in actions:
        for dep in a.depends_on:
            if dep in done:
                continue
            if dep not in seqs:
                raise InputError(f"actions[seq={a.seq}].depends_on", dep, "seq numbers of actions in the same plan")
            graph[a.seq].add(dep)
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise InputError("actions[].depends_on", exc.args[1], "dependencies without cycles",
                         problem=f"the plan's dependencies form a cycle {exc.args[1]}") from None
    return graph


def _waves(graph: Graph) -> list[int]:
    """Topological order, each wave of ready actions sorted by seq so the order is deterministic."""
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    ordered: list[int] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        ordered.extend(ready)
        sorter.done(*ready)
    return ordered


def _add_rule(graph: Graph, edges: list[Edge]) -> None:
    """Add a rule's edges: all at once when they close no cycle (the usual case, one O(V+E) check), else one by
    one, skipping each edge that would."""
    trial = {seq: set(deps) for seq, deps in graph.items()}
    for dependent, dependency in edges:
        if dependent != dependency:
            trial[dependent].add(dependency)
    try:
        TopologicalSorter(trial).prepare()
    except CycleError:
        for dependent, dependency in edges:
            _add_soft_edge(graph, dependent, dependency)
        return
    graph.update(trial)


def _add_soft_edge(graph: Graph, dependent: int, dependency: int) -> None:
    if dependent == dependency or dependency in graph[dependent] or _reaches(graph, dependency, dependent):
        return
    graph[dependent].add(dependency)


def _reaches(graph: Graph, start: int, target: int) -> bool:
    """Whether `start` depends, directly or not, on `target`."""
    stack, seen = [start], {start}
    while stack:
        for dep in graph[stack.pop()]:
            if dep == target:
                return True
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return False


def _replica_ids(action: Action) -> tuple[str, ...]:
    """Replicas an action works on, besides making or removing them."""
    args = action.args
    if isinstance(args, MigrateRequests):
        return (args.from_replica_id, args.to_replica_id)
    replica_id = getattr(args, "replica_id", None)
    return (replica_id,) if replica_id is not None else ()


class _Index:
    """The plan's actions grouped the ways the rules look them up; each rule yields (dependent, dependency)."""

    def __init__(self, actions: Sequence[Action], gpus_of: Mapping[str, tuple[str, ...]]):
        self.makes: dict[str, Action] = {}  # replica_id → activate/reconfigure
        self.breaks: dict[str, Action] = {}  # replica_id → deactivate
        self.routings: dict[str, list[Action]] = defaultdict(list)  # model → set_routing actions
        self.on_replica: dict[str, list[Action]] = defaultdict(list)  # replica_id → other actions on it
        self.resizes: list[Action] = []
        for a in actions:
            if isinstance(a.args, _MAKES):
                self.makes[a.args.replica_id] = a
            elif isinstance(a.args, DeactivateModel):
                self.breaks[a.args.replica_id] = a
            elif isinstance(a.args, SetRouting):
                self.routings[a.args.model].append(a)
            else:
                for rid in _replica_ids(a):
                    self.on_replica[rid].append(a)
                if a.kind == "resize_kv":
                    self.resizes.append(a)
        self.gpus_of = gpus_of
        self.breaks_on: dict[str, list[Action]] = defaultdict(list)  # GPU → deactivations freeing it
        for d in self.breaks.values():
            for gpu in self._break_gpus(d):
                self.breaks_on[gpu].append(d)
        self.makes_on: dict[str, list[Action]] = defaultdict(list)  # GPU → activations taking it
        self.makes_of: dict[str, list[Action]] = defaultdict(list)  # model → activations
        for m in self.makes.values():
            self.makes_of[m.args.model].append(m)
            for gpu in m.args.gpu_ids:
                self.makes_on[gpu].append(m)

    def _break_gpus(self, d: Action) -> set[str]:
        return set(self.gpus_of.get(d.args.replica_id, ())) | {d.worker_id}

    def routing_after_make(self) -> Iterator[Edge]:
        for routings in self.routings.values():
            for s in routings:
                for rid, weight in s.args.weights.items():
                    if weight > 0 and rid in self.makes:
                        yield s.seq, self.makes[rid].seq

    def lifecycle(self) -> Iterator[Edge]:
        for rid, acts in self.on_replica.items():
            for a in acts:
                if rid in self.makes:
                    yield a.seq, self.makes[rid].seq
                if rid in self.breaks:
                    yield self.breaks[rid].seq, a.seq

    def drain_after_reroute(self) -> Iterator[Edge]:
        for rid, d in self.breaks.items():
            for s in self.routings.get(d.args.model, ()):
                if s.args.weights.get(rid, 0.0) <= 0:
                    yield d.seq, s.seq

    def free_before_load(self) -> Iterator[Edge]:
        for m in self.makes.values():
            for gpu in m.args.gpu_ids:
                for d in self.breaks_on.get(gpu, ()):
                    if d.args.model != m.args.model:
                        yield m.seq, d.seq

    def resize_between(self) -> Iterator[Edge]:
        for r in self.resizes:
            for d in self.breaks_on.get(r.worker_id, ()):
                yield r.seq, d.seq
            for m in self.makes_on.get(r.worker_id, ()):
                if m.args.replica_id != r.args.replica_id:
                    yield m.seq, r.seq

    def make_before_break(self) -> Iterator[Edge]:
        """Only where routing does not already imply it: a break that waits for a routing change of its model
        waits, through it, for the makes that routing sends traffic to."""
        for rid, d in self.breaks.items():
            if any(s.args.weights.get(rid, 0.0) <= 0 for s in self.routings.get(d.args.model, ())):
                continue
            for m in self.makes_of.get(d.args.model, ()):
                if m.args.replica_id != rid and not (self._break_gpus(d) & set(m.args.gpu_ids)):
                    yield d.seq, m.seq
