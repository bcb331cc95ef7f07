"""The `ray` backend: one Ray actor per GPU, hosting that GPU's engine; the executor talks to it through
`RayWorkerClient`, a WorkerClient over the actor handle.

The engine is built inside the actor by `engine_factory(worker_id)`, a picklable callable the caller passes in
(the controller passes one that builds `workers.engine` objects, the what-if tools one that builds simulated
workers): executors import only `core` and `ray`. Actors are threaded (`max_concurrency`), so `status()` answers
while a long `apply()` (a model activation) runs; the hosted engine must therefore be thread-safe, as every
WorkerClient is. A dead actor or a call that exceeds `call_timeout_s` raises from the client, which is what the
WorkerClient contract calls "unreachable": the runner retries it and then reports the worker.

Needs the `ray` extra (`pip install fleetwise[ray]`); importing this module without Ray fails with that hint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from core.actions import Action, ApplyResult
from core.errors import InputError
from core.protocols import WorkerClient
from core.requests import Request
from core.status import SubmitResult, WorkerStatus
from executors.backends import BackendKind, Router, WorkerSet

try:
    import ray
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the ray backend needs Ray: pip install 'fleetwise[ray]'") from exc

EngineFactory = Callable[[str], WorkerClient]
ACTOR_PREFIX = "fleetwise-worker-"


class WorkerActor:
    """Body of the per-GPU actor (wrapped with `ray.remote` by `ray_workers`): forwards to the hosted engine."""

    def __init__(self, worker_id: str, engine_factory: EngineFactory):
        self.engine = engine_factory(worker_id)
        if self.engine.worker_id != worker_id:
            raise InputError("engine_factory", worker_id, f"an engine for {worker_id!r}, "
                             f"not {self.engine.worker_id!r}")

    def status(self) -> WorkerStatus:
        return self.engine.status()

    def apply(self, action: Action) -> ApplyResult:
        return self.engine.apply(action)

    def submit(self, request: Request) -> SubmitResult:
        return self.engine.submit(request)


class RayWorkerClient:
    """WorkerClient over one WorkerActor. Raises `ray.exceptions.RayError` subclasses (actor died, timed out)."""

    def __init__(self, worker_id: str, handle: Any, call_timeout_s: float = 60.0):
        self._worker_id, self.handle, self.call_timeout_s = worker_id, handle, call_timeout_s

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def status(self) -> WorkerStatus:
        return ray.get(self.handle.status.remote(), timeout=self.call_timeout_s)

    def apply(self, action: Action) -> ApplyResult:
        return ray.get(self.handle.apply.remote(action), timeout=self.call_timeout_s)

    def submit(self, request: Request) -> SubmitResult:
        return ray.get(self.handle.submit.remote(request), timeout=self.call_timeout_s)


def ray_workers(worker_ids: Iterable[str], engine_factory: EngineFactory, router: Router | None = None, *,
                num_gpus_per_actor: float = 0.0, num_cpus_per_actor: float = 0.0, max_concurrency: int = 4,
                call_timeout_s: float = 60.0, namespace_prefix: str = ACTOR_PREFIX) -> WorkerSet:
    """Start (or reuse, by name) one actor per GPU id and return their WorkerSet. Ray must be initialised.

    On a GPU cluster pass `num_gpus_per_actor=1` so Ray places each actor on its own device; CPU-only clusters
    (tests, simulations) keep the default 0.
    """
    if not ray.is_initialized():
        raise InputError("ray", "not initialised", "call ray.init(...) (or connect to a cluster) first")
    actor = ray.remote(WorkerActor)
    clients = {}
    for worker_id in worker_ids:
        handle = actor.options(name=namespace_prefix + worker_id, get_if_exists=True, num_gpus=num_gpus_per_actor,
                               num_cpus=num_cpus_per_actor, max_concurrency=max_concurrency,
                               ).remote(worker_id, engine_factory)
        clients[worker_id] = RayWorkerClient(worker_id, handle, call_timeout_s)
    return WorkerSet(clients, router, kind=BackendKind.RAY, status_timeout_s=call_timeout_s)
