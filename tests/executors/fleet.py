"""A small fleet of StateMachineTestWorkers with a router, an in-memory log and an executor, for runner tests."""

from __future__ import annotations

from collections.abc import Callable

from core.actions import Action, ApplyResult
from core.protocols import ActionLog
from executors.attempt import RetryPolicy
from executors.backends import WorkerSet, local_workers
from executors.executor import PlanExecutor
from executors.memory_log import InMemoryActionLog
from executors.routing import RoutingTable
from executors.runner import RunnerConfig
from tests.executors.state_worker import StateMachineTestWorker, TestWorkerConfig

FAST_RETRY = RetryPolicy(max_attempts=3, timeout_floor_s=5.0, backoff_initial_s=0.01, backoff_max_s=0.05,
                         backoff_jitter_s=0.01)


class WatchedRouter(RoutingTable):
    """A RoutingTable that runs `before_apply` first (tests assert invariants there)."""

    def __init__(self, initial: dict[str, dict[str, float]], before_apply: Callable[[Action], None]):
        super().__init__(initial)
        self.before_apply = before_apply

    def apply(self, action: Action) -> ApplyResult:
        self.before_apply(action)
        return super().apply(action)


class TestFleet:
    """Workers h100/0 … h100/{n-1}; `checks` run before every apply (workers and router)."""

    __test__ = False

    def __init__(self, n: int = 2, *, routing: dict[str, dict[str, float]] | None = None,
                 config: RunnerConfig | None = None, log: ActionLog | None = None, **worker_options: object):
        self.log = log or InMemoryActionLog()
        self.checks: list[Callable[[Action], None]] = []
        self.max_in_flight = 0  # applies in flight at once, across all workers
        self.workers = {f"h100/{i}": StateMachineTestWorker(TestWorkerConfig(f"h100/{i}", **worker_options),
                                                            self._before_apply) for i in range(n)}
        self.router = WatchedRouter(routing or {}, self._before_apply)
        self.worker_set: WorkerSet = local_workers(self.workers, self.workers.__getitem__, self.router)
        self.executor = PlanExecutor(self.worker_set, self.log,
                                     config=config or RunnerConfig(max_concurrency=4, retry=FAST_RETRY))

    def _before_apply(self, action: Action) -> None:
        self.max_in_flight = max(self.max_in_flight, sum(w.in_apply for w in self.workers.values()))
        for check in self.checks:
            check(action)

    def active_replicas(self) -> set[str]:
        return {r.replica_id for w in self.workers.values() for r in w.status().replicas if r.residency == "active"}

    def dependencies_recorded(self, action: Action) -> None:
        """Check: every dependency's outcome is in the log before this action reaches a worker."""
        for dep in action.depends_on:
            assert self.log.outcome(f"{action.plan_id}:{dep}") is not None, f"{action.seq} ran before {dep} logged"
