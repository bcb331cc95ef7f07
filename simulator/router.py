"""The fleet router: sends each request to a replica of its model by the plan's routing weights.

- Weights come from `SetRouting` actions (or from the plan's `routing` for models no action routes).
- Targets are the replicas with a positive weight that are serving; while none serves, the ones still loading
  (the request waits there for the activation); while none exists, the request waits here, at the router.
- Among targets, smooth weighted round-robin (nginx's): deterministic, and exact shares over any window.
- A request waiting at the router longer than `timeout_s` is dropped with reason `no_replica_timeout`
  (`core.state.NO_REPLICA_TIMEOUT`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.actions import Residency
from core.requests import Request
from workers.scheduler import Sequence

if TYPE_CHECKING:
    from simulator.worker import SimReplica, SimulatedWorker



@dataclass(slots=True, eq=False)
class _Target:
    replica_id: str
    weight: float
    worker: SimulatedWorker
    replica: SimReplica
    current: float = 0.0  # smooth weighted round-robin state


@dataclass(slots=True)
class Waiting:
    """A request (or a sequence sent back by its replica) waiting at the router for a replica of its model."""

    since_s: float
    item: Request | Sequence

    @property
    def row(self) -> int:
        return self.item.request_id if isinstance(self.item, Request) else self.item.seq_id


@dataclass
class Router:
    """Routing table, replica locations and the per-model waiting line."""

    timeout_s: float
    locate: Callable[[str], tuple[SimulatedWorker, SimReplica] | None]  # replica id → (leader, replica)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # model → replica id → weight
    waiting: dict[str, deque[Waiting]] = field(default_factory=dict)  # model → FIFO of waiting requests
    _targets: dict[str, list[_Target]] = field(default_factory=dict)  # model → current targets (cache)

    def set_weights(self, model: str, weights: dict[str, float]) -> None:
        self.weights[model] = dict(weights)
        self.refresh(model)

    def refresh(self, model: str) -> None:
        """Recompute a model's targets (a replica started, stopped or moved; weights changed)."""
        serving, loading = [], []
        for rid, weight in sorted(self.weights.get(model, {}).items()):
            found = self.locate(rid) if weight > 0 else None
            if found is None:
                continue
            worker, rep = found
            if not worker.healthy or rep.residency is not Residency.ACTIVE or rep.draining:
                continue
            (serving if rep.activating_until_s is None else loading).append(_Target(rid, weight, worker, rep))
        self._targets[model] = serving or loading

    def pick(self, model: str) -> _Target | None:
        """The next target of a model (smooth weighted round-robin), or None when it has none."""
        targets = self._targets.get(model)
        if not targets:
            return None
        if len(targets) == 1:
            return targets[0]
        total = 0.0
        best = targets[0]
        for t in targets:
            t.current += t.weight
            total += t.weight
            if t.current > best.current:
                best = t
        best.current -= total
        return best

    def wait(self, model: str, item: Request | Sequence, now_s: float) -> None:
        self.waiting.setdefault(model, deque()).append(Waiting(now_s, item))

    def take_waiting(self, model: str) -> list[Waiting]:
        line = self.waiting.pop(model, None)
        return list(line) if line else []

    def expired(self, now_s: float) -> list[Waiting]:
        """Remove and return the requests that waited longer than the timeout."""
        out: list[Waiting] = []
        for line in self.waiting.values():
            while line and now_s - line[0].since_s >= self.timeout_s:
                out.append(line.popleft())
        return out

    def num_waiting(self, model: str | None = None) -> int:
        if model is not None:
            return len(self.waiting.get(model, ()))
        return sum(len(q) for q in self.waiting.values())
