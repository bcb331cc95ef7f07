"""Protocols between the stages. Each docstring is the contract an implementation must keep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from core.actions import Action, ApplyResult
from core.fleet import FleetSpec
from core.forecast import Forecast, ScenarioSet
from core.plan import Plan
from core.requests import Request
from core.state import EventKind, FleetState
from core.status import SubmitResult, WorkerStatus


@runtime_checkable
class Clock(Protocol):
    """Time in seconds. The wall clock and the simulator's clock share this interface.

    `now()` never goes backwards. `sleep_until(t)` returns once `now() >= t` (immediately if already past); in a
    simulation it advances simulated time instead of waiting.
    """

    def now(self) -> float: ...

    def sleep_until(self, t: float) -> None: ...


@runtime_checkable
class WorkerClient(Protocol):
    """Control of one GPU worker: the simulator's SimulatedWorker, an in-process engine, an HTTP agent, a Ray actor.

    - `status()` is cheap and side-effect free.
    - `apply(action)` is idempotent on `action.idempotency_key` (a repeat returns the first result, changes
      nothing) and honours revisions (see core.actions): lower revision → `stale`, same revision with other
      arguments → `conflict`, a shrink that must wait for pages → `deferred`. Bad arguments (unknown model or
      replica, negative limits) return `failed` with a message; `apply` raises only when the worker is unreachable.
    - `submit(request)` queues a request: `accepted` if its model is active, `queued` if it is activating or
      resident on host, `rejected` (with the reason) if the model is unknown or the prompt exceeds the context.
    """

    @property
    def worker_id(self) -> str: ...

    def status(self) -> WorkerStatus: ...

    def apply(self, action: Action) -> ApplyResult: ...

    def submit(self, request: Request) -> SubmitResult: ...


@runtime_checkable
class Forecaster(Protocol):
    """Forecasts one series of counts per interval.

    `fit(history, interval_s=...)` learns from a non-negative series (oldest first; it may be short, contain
    zeros, or be all zeros). `forecast(horizon, quantiles)` then returns `horizon` intervals after the history's
    end with the requested quantile levels, monotone across levels and never NaN; when the history cannot support
    the method, the forecast names its fallback method and reason instead of failing.
    """

    name: str

    def fit(self, history: np.ndarray, *, interval_s: float) -> None: ...

    def forecast(self, horizon: int, quantiles: Sequence[float] = (0.1, 0.5, 0.9, 0.99)) -> Forecast: ...


@runtime_checkable
class Planner(Protocol):
    """Makes a plan from the fleet, its current state and (for predictive planners) scenarios.

    - `plan()` returns within about `budget_s` seconds of wall time with the best plan found so far; it never
      raises for infeasible demand (unmet load is priced and explained in `Plan.reasons`).
    - Every action has a reason; the plan never places more weights + KV than a GPU holds nor uses GPUs that are
      not healthy in `state`.
    - `plan_id` is deterministic in (fleet, policy, generation, inputs), so seeded simulations replay exactly.
    - `subscriptions` are the events, besides the periodic tick, on which the simulator or controller calls it.
    """

    name: str
    subscriptions: frozenset[EventKind]

    def plan(self, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None, budget_s: float) -> Plan: ...


@runtime_checkable
class ActionLog(Protocol):
    """Durable record of every action's life, so that an executor can restart without applying anything twice.

    - `record_plan(plan)` stores the plan's actions as `pending` (idempotent per plan_id).
    - `mark_started(key, attempt)` is written before the action is sent to its worker.
    - `record_outcome(key, result)` is written after the worker answers and before any action that depends on it
      starts; it is durable when it returns.
    - `outcome(key)` is the last recorded result (None if none).
    - `unfinished(plan_id)` lists the actions with no final outcome, in plan order: started-but-unanswered ones
      are re-sent with the same idempotency key (the worker deduplicates).
    """

    def record_plan(self, plan: Plan) -> None: ...

    def mark_started(self, key: str, *, attempt: int) -> None: ...

    def record_outcome(self, key: str, result: ApplyResult) -> None: ...

    def outcome(self, key: str) -> ApplyResult | None: ...

    def unfinished(self, plan_id: str) -> list[Action]: ...
