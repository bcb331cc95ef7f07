"""Backends: where actions go. Each backend is a factory of `WorkerClient`s for a fleet, wrapped in a `WorkerSet`.

Executors import only `core`, so the clients are injected by the caller (the controller wires them):

- `sim`: the simulator's `SimulatedWorker`s, passed as instances (`sim_workers`);
- `local`: in-process engines, e.g. `workers.client.LocalWorkerClient`, built by a factory per GPU id;
- `http`: worker agents, e.g. `workers.client.HttpWorkerClient(base_url)`, one per GPU id and URL;
- `ray`: one Ray actor per GPU hosting an engine (`executors.ray_backend.ray_workers`).

A `WorkerSet` also holds the fleet router (the target of `worker_id=None` actions) and observes the fleet: every
worker's `status()` in parallel, each within a timeout, so one unresponsive worker neither blocks the others nor
the executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from core.actions import Action, ApplyResult
from core.errors import InputError
from core.protocols import WorkerClient
from core.status import WorkerStatus
from executors.attempt import Applier, RetryPolicy, call_with_timeout, describe
from executors.runner import RunnerConfig


class BackendKind(StrEnum):
    SIM = "sim"
    LOCAL = "local"
    HTTP = "http"
    RAY = "ray"


# Simulated workers answer at once and share the simulator's event heap: one action at a time keeps runs
# deterministic. Real workers take actions in parallel across GPUs.
DEFAULT_CONFIGS: dict[BackendKind, RunnerConfig] = {
    BackendKind.SIM: RunnerConfig(max_concurrency=1),
    BackendKind.LOCAL: RunnerConfig(max_concurrency=4),
    BackendKind.HTTP: RunnerConfig(max_concurrency=16),
    BackendKind.RAY: RunnerConfig(max_concurrency=16),
}


@runtime_checkable
class Router(Protocol):
    """The fleet router: applies `set_routing` actions (same idempotency and revision contract as workers) and
    reports its current weights (model → replica_id → weight)."""

    def apply(self, action: Action) -> ApplyResult: ...

    def weights(self) -> dict[str, dict[str, float]]: ...


@dataclass(frozen=True)
class Observation:
    """Worker statuses taken at one moment; `errors` names the workers that did not answer, and why."""

    statuses: tuple[WorkerStatus, ...]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def unhealthy(self) -> dict[str, str]:
        """Workers not to send actions to: those that did not answer and those reporting themselves unhealthy."""
        sick = {s.worker_id: "it reported itself unhealthy" for s in self.statuses if not s.healthy}
        return {**sick, **{w: f"its status call failed ({e})" for w, e in self.errors.items()}}


class WorkerSet:
    """The WorkerClients of one fleet, keyed by GPU id, and its router."""

    def __init__(self, clients: Mapping[str, WorkerClient] | Iterable[WorkerClient], router: Router | None = None,
                 *, kind: BackendKind = BackendKind.LOCAL, status_timeout_s: float = 5.0):
        self.clients: dict[str, WorkerClient] = {}
        pairs = clients.items() if isinstance(clients, Mapping) else ((c.worker_id, c) for c in clients)
        for worker_id, client in pairs:
            if worker_id in self.clients:
                raise InputError("workers[].worker_id", worker_id, "one client per GPU id")
            self.clients[worker_id] = client
        self.router, self.kind, self.status_timeout_s = router, kind, status_timeout_s

    @property
    def default_config(self) -> RunnerConfig:
        return DEFAULT_CONFIGS[self.kind]

    def target(self, worker_id: str | None) -> Applier | None:
        """Where an action for `worker_id` goes (None: the router); None when there is no such target."""
        return self.router if worker_id is None else self.clients.get(worker_id)

    def routing(self) -> dict[str, dict[str, float]] | None:
        return None if self.router is None else self.router.weights()

    def observe(self) -> Observation:
        """Every worker's status, in parallel, each within `status_timeout_s`."""
        if not self.clients:
            return Observation(())
        statuses, errors = [], {}
        with ThreadPoolExecutor(min(32, len(self.clients)), thread_name_prefix="fleetwise-status") as pool:
            futures = {w: pool.submit(call_with_timeout, _status, c, self.status_timeout_s)
                       for w, c in sorted(self.clients.items())}
            for worker_id, future in futures.items():
                try:
                    status = future.result()
                except TimeoutError:
                    errors[worker_id] = f"no status within {self.status_timeout_s:g} s"
                    continue
                except Exception as exc:  # noqa: BLE001 - any failure to answer means: not observed
                    errors[worker_id] = describe(exc)
                    continue
                if status.worker_id != worker_id:
                    errors[worker_id] = f"the client for {worker_id} reached worker {status.worker_id}"
                else:
                    statuses.append(status)
        return Observation(tuple(statuses), errors)


def _status(client: WorkerClient) -> WorkerStatus:
    return client.status()


def sim_workers(workers: Iterable[WorkerClient], router: Router | None = None) -> WorkerSet:
    """The `sim` backend: the simulator's SimulatedWorkers (or any WorkerClients living in simulated time)."""
    return WorkerSet(workers, router, kind=BackendKind.SIM)


def local_workers(worker_ids: Iterable[str], factory: Callable[[str], WorkerClient],
                  router: Router | None = None) -> WorkerSet:
    """The `local` backend: one in-process engine client per GPU id, built by `factory(worker_id)`."""
    return WorkerSet(_built(worker_ids, factory), router, kind=BackendKind.LOCAL)


def http_workers(base_urls: Mapping[str, str], factory: Callable[[str, str], WorkerClient],
                 router: Router | None = None, *, status_timeout_s: float = 5.0) -> WorkerSet:
    """The `http` backend: `factory(worker_id, base_url)` for each GPU id → worker agent URL (for the engine's
    agents: `lambda _, url: HttpWorkerClient(url)`). Building contacts no agent; an agent that turns out to serve
    another GPU id is reported by `observe()`."""
    for worker_id, url in base_urls.items():
        if not url.startswith(("http://", "https://")):
            raise InputError(f"workers[{worker_id!r}].url", url, "an http:// or https:// URL")
    clients = {worker_id: factory(worker_id, url) for worker_id, url in sorted(base_urls.items())}
    return WorkerSet(clients, router, kind=BackendKind.HTTP, status_timeout_s=status_timeout_s)


def _built(worker_ids: Iterable[str], factory: Callable[[str], WorkerClient]) -> list[WorkerClient]:
    clients = []
    for worker_id in worker_ids:
        client = factory(worker_id)
        if client.worker_id != worker_id:
            raise InputError("worker factory", worker_id, f"a client for {worker_id!r}, not {client.worker_id!r}")
        clients.append(client)
    return clients


__all__ = [
    "DEFAULT_CONFIGS",
    "BackendKind",
    "Observation",
    "RetryPolicy",
    "Router",
    "WorkerSet",
    "http_workers",
    "local_workers",
    "sim_workers",
]
