"""The fleet as the executor sees it at execution time: worker statuses plus the router's current weights.

`ObservedFleet` hides how statuses are laid out (replicas are reported by their leader GPU) and answers the
questions the diff asks: is this replica active as the plan wants it, what KV limit does it have, where does the
router send a model's traffic now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.actions import Residency
from core.plan import Replica
from core.status import ReplicaStatus, WorkerStatus

GIB = 1024**3

Weights = dict[str, float]  # replica_id → normalised share of the model's new requests


def normalise(weights: Mapping[str, float]) -> Weights:
    """Shares summing to 1 over replicas with a positive weight; {} when nothing is routed."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return {}
    return {r: w / total for r, w in sorted(weights.items()) if w > 0}


@dataclass(frozen=True, slots=True)
class ObservedReplica:
    """One replica as its leader reported it."""

    leader: str
    status: ReplicaStatus
    kv_page_bytes: int

    @property
    def kv_limit_gib(self) -> float | None:
        pages = self.status.kv_limit_pages
        return None if pages is None else pages * self.kv_page_bytes / GIB

    @property
    def is_serving_or_activating(self) -> bool:
        return self.status.residency == Residency.ACTIVE or self.status.activating_until_s is not None

    def matches(self, replica: Replica) -> bool:
        """Same leader, TP degree and GPUs (an empty reported GPU list is taken as 'the leader alone')."""
        gpus = self.status.gpu_ids or (self.leader,)
        return self.leader == replica.leader and self.status.tp == replica.tp and gpus == replica.gpu_ids


class ObservedFleet:
    """Index over worker statuses and the router's weights. `routing=None` means the routing is unknown."""

    def __init__(self, workers: Sequence[WorkerStatus], routing: Mapping[str, Mapping[str, float]] | None = None):
        self.workers: dict[str, WorkerStatus] = {w.worker_id: w for w in workers}
        self.routing: dict[str, Weights] | None = (
            None if routing is None else {m: normalise(w) for m, w in routing.items()}
        )
        self._replicas: dict[str, ObservedReplica] = {}
        for w in workers:
            for r in w.replicas:
                seen = ObservedReplica(w.worker_id, r, w.kv_page_bytes)
                # An id reported twice (engines name never-activated host copies by their model) is the serving
                # copy if there is one.
                known = self._replicas.get(r.replica_id)
                if known is None or (seen.is_serving_or_activating and not known.is_serving_or_activating):
                    self._replicas[r.replica_id] = seen

    def replica(self, replica_id: str) -> ObservedReplica | None:
        return self._replicas.get(replica_id)

    @property
    def replicas(self) -> list[ObservedReplica]:
        return [self._replicas[k] for k in sorted(self._replicas)]

    def active_as_planned(self, replica: Replica) -> bool:
        """The replica serves (or is activating) on the planned leader with the planned TP group."""
        seen = self.replica(replica.replica_id)
        return seen is not None and seen.is_serving_or_activating and seen.matches(replica)

    def routing_of(self, model: str) -> Weights | None:
        """Current shares of `model` (`{}` if the router knows the model but routes nowhere); None if unknown."""
        if self.routing is None:
            return None
        return self.routing.get(model, {})

    def is_healthy(self, worker_id: str) -> bool | None:
        """True/False as the worker reported; None when the worker was not observed."""
        status = self.workers.get(worker_id)
        return None if status is None else status.healthy
