"""Executors: diff an observed fleet state against a plan into ordered actions and carry them out on
WorkerClients with bounded concurrency, retries and idempotency, writing every outcome to an ActionLog.

Entry points: `PlanExecutor(workers, log).execute(plan)` with a `WorkerSet` from one of the backends
(`sim_workers`, `local_workers`, `http_workers`, `executors.ray_backend.ray_workers`); `diff(observed, plan)` for
the schedule alone. See docs/executors.md.

May import: core (and ray, in executors/ray_backend.py only).
"""

from executors.attempt import RetryPolicy
from executors.backends import (
    BackendKind,
    Observation,
    Router,
    WorkerSet,
    http_workers,
    local_workers,
    sim_workers,
)
from executors.diff import Damping, Schedule, diff
from executors.executor import PlanExecutor
from executors.memory_log import InMemoryActionLog
from executors.report import ActionRecord, ExecutionReport
from executors.routing import RoutingTable
from executors.runner import RunnerConfig

__all__ = [
    "ActionRecord", "BackendKind", "Damping", "ExecutionReport", "InMemoryActionLog", "Observation", "PlanExecutor",
    "RetryPolicy", "Router", "RoutingTable", "RunnerConfig", "Schedule", "WorkerSet", "diff", "http_workers",
    "local_workers", "sim_workers",
]
