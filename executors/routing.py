"""The fleet router's table: per model, the weight of each replica for new requests.

`set_routing` actions (worker_id None) land here, under the same contract workers keep (core.actions):
idempotent per key; per model, a lower revision is `stale` and the same revision with other weights a `conflict`.
A controller or simulator reads `shares(model)` to pick a replica for each request.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from core.actions import Action, ApplyResult, SetRouting
from executors.observed import Weights, normalise


class RoutingTable:
    """Thread-safe routing weights changed only through `apply`."""

    def __init__(self, initial: Mapping[str, Mapping[str, float]] | None = None):
        self._lock = threading.Lock()
        self._weights: dict[str, dict[str, float]] = {m: dict(w) for m, w in (initial or {}).items()}
        self._revisions: dict[str, int] = {}
        self._answers: dict[str, ApplyResult] = {}

    def apply(self, action: Action) -> ApplyResult:
        key = action.idempotency_key
        with self._lock:
            if key in self._answers:
                return self._answers[key]
            answer = self._decide(action)
            self._answers[key] = answer
            return answer

    def _decide(self, action: Action) -> ApplyResult:
        key, args = action.idempotency_key, action.args
        if not isinstance(args, SetRouting):
            return ApplyResult(idempotency_key=key, status="failed",
                               message=f"the router applies only set_routing, not {action.kind}")
        revision = self._revisions.get(args.model, -1)
        if action.revision < revision:
            return ApplyResult(idempotency_key=key, status="stale", worker_revision=revision,
                               message=f"routing of {args.model} is at revision {revision} > {action.revision}")
        if action.revision == revision and normalise(args.weights) != normalise(self._weights.get(args.model, {})):
            return ApplyResult(idempotency_key=key, status="conflict", worker_revision=revision,
                               message=f"revision {revision} already set other weights for {args.model}")
        self._weights[args.model] = dict(args.weights)
        self._revisions[args.model] = action.revision
        return ApplyResult(idempotency_key=key, status="applied", worker_revision=action.revision)

    def weights(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {m: dict(w) for m, w in self._weights.items()}

    def shares(self, model: str) -> Weights:
        """Normalised shares of `model`'s new requests ({} when it is routed nowhere)."""
        with self._lock:
            return normalise(self._weights.get(model, {}))
