"""PlanExecutor: diff a plan against the observed fleet, reconcile with the action log, run what is left.

Execution is a function of (plan, observed fleet, action log), so running a plan again — after the executor was
killed halfway, or by mistake — continues it rather than repeating it:

1. diff against the fleet as observed now (`executors.diff`); executor-added actions get content-derived seqs, so
   the same drift action keeps its idempotency key from one execution to the next;
2. `record_plan(schedule.record)` — the plan's actions and the added ones are stored `pending` before anything is
   sent (a no-op for what the log already holds);
3. an action with an outcome in the log is never sent again: its logged outcome stands (and gates dependents);
4. satisfied actions get a `satisfied: …` outcome; so do unfinished ones an earlier execution left in the log
   that the fleet no longer needs (their effect is observed now);
5. the rest run (`executors.runner`): `mark_started` before each attempt, `record_outcome` before any dependent
   starts. An action that was started but never answered is re-sent with its key; the worker deduplicates.

An added action the log does not hold (a log that keeps an already-stored plan as it is) is not sent: an outcome
could not be recorded for it. It is reported `failed` (`not logged: …`) and the report asks for a replan, whose
plan will contain the action.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from core.actions import Action, ApplyResult
from core.errors import NotFoundError
from core.plan import Plan
from core.protocols import ActionLog, Clock
from core.status import WorkerStatus
from executors.backends import Observation, WorkerSet
from executors.diff import DEFAULT_DAMPING, Damping, Schedule, diff
from executors.report import NOT_LOGGED, SATISFIED, ActionRecord, ExecutionReport, made_here
from executors.runner import ActionRunner, RunnerConfig


class PlanExecutor:
    """Carries plans out on a WorkerSet, recording every step in an ActionLog.

    `clock` (optional) paces retry back-off in simulated time; without it back-off sleeps on the wall clock.
    """

    def __init__(self, workers: WorkerSet, log: ActionLog, *, config: RunnerConfig | None = None,
                 damping: Damping = DEFAULT_DAMPING, clock: Clock | None = None):
        self.workers, self.log, self.damping = workers, log, damping
        self.config = config or workers.default_config
        sleep = None if clock is None else _clock_sleep(clock)
        self.runner = ActionRunner(workers.target, log, self.config, sleep)

    def plan_schedule(self, plan: Plan, observed: Sequence[WorkerStatus],
                      routing: Mapping[str, Mapping[str, float]] | None) -> Schedule:
        """The diff this executor would run (for `plan diff` views and advisory mode); sends nothing."""
        return diff(observed, plan, routing=routing, damping=self.damping)

    def execute(self, plan: Plan, *, observed: Sequence[WorkerStatus] | None = None,
                routing: Mapping[str, Mapping[str, float]] | None = None) -> ExecutionReport:
        """Apply `plan` (see the module docstring). `observed` defaults to the workers' status now and `routing`
        to the WorkerSet router's weights."""
        started = time.perf_counter()
        observation = self.workers.observe() if observed is None else Observation(tuple(observed))
        routing = routing if routing is not None else self.workers.routing()
        schedule = self.plan_schedule(plan, observation.statuses, routing)
        self.log.record_plan(schedule.record)
        book = _Book(self.log, plan.plan_id)
        for s in schedule.satisfied:
            book.settle(s.action, made_here(s.action.idempotency_key, "applied", SATISFIED, s.reason))
        scheduled = {a.idempotency_key for a in schedule.actions} | {s.action.idempotency_key
                                                                     for s in schedule.satisfied}
        for leftover in book.unfinished_besides(scheduled):
            book.settle(leftover, made_here(leftover.idempotency_key, "applied", SATISFIED,
                                            "left by an earlier execution; not needed at this one"))
        to_run = []
        for action in schedule.actions:
            if not book.settle_if_logged(action, added=action.seq in schedule.added):
                to_run.append(action)
        records = book.records + self.runner.run(to_run, book.results, observation.unhealthy, schedule.added)
        return ExecutionReport.build(plan.plan_id, records, resumed=book.resumed,
                                     wall_s=time.perf_counter() - started)


class _Book:
    """Outcomes known before the run: from the log (earlier executions) or decided now without sending."""

    def __init__(self, log: ActionLog, plan_id: str):
        self.log = log
        self.unfinished = {a.idempotency_key: a for a in _unfinished(log, plan_id)}
        self.results: dict[int, ApplyResult] = {}
        self.records: list[ActionRecord] = []
        self.resumed = False

    def settle(self, action: Action, result: ApplyResult, *, added: bool = False) -> None:
        """Record `result` for `action` unless the log holds an outcome already (which then stands)."""
        logged = self.log.outcome(action.idempotency_key)
        if logged is None:
            self.log.record_outcome(action.idempotency_key, result)
        else:
            self.resumed = True
        self._keep(action, logged or result, added)

    def settle_if_logged(self, action: Action, *, added: bool) -> bool:
        """True when `action` needs no sending: the log has its outcome, or cannot hold it at all."""
        key = action.idempotency_key
        if key in self.unfinished:
            return False
        logged = self.log.outcome(key)
        if logged is None:  # the log does not hold this (added) action: sending it would leave no trace
            self._keep(action, made_here(key, "failed", NOT_LOGGED, "the action log did not record this "
                                         "executor-added action; replan to include it"), added)
            return True
        self.resumed = True
        self._keep(action, logged, added)
        return True

    def unfinished_besides(self, keys: set[str]) -> list[Action]:
        return [a for k, a in self.unfinished.items() if k not in keys]

    def _keep(self, action: Action, result: ApplyResult, added: bool) -> None:
        self.results[action.seq] = result
        self.records.append(ActionRecord.of(action, result, added=added))


def _unfinished(log: ActionLog, plan_id: str) -> list[Action]:
    try:
        return log.unfinished(plan_id)
    except NotFoundError:  # a log may refuse plans it has never seen; after record_plan it has
        return []


def _clock_sleep(clock: Clock) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        clock.sleep_until(clock.now() + seconds)

    return sleep
