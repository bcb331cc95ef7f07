"""PlanExecutor: diff a plan against the observed fleet, record it, run it, and resume it after a crash.

Crash safety rests on the ActionLog contract (core.protocols) and the order of writes:

1. `record_plan(schedule.record)` — every action of the execution (the plan's own, satisfied or not, and those
   the executor added for drift) is stored `pending` before anything is sent;
2. satisfied actions get their outcome (`satisfied: …`);
3. per attempt `mark_started`, then the worker call, then `record_outcome` before any dependent starts.

`execute(plan)` on a plan the log already knows (a previous executor died mid-plan, or it is asked twice) does not
diff again: re-diffing would number drift actions anew and could reuse an idempotency key for a different action.
It resumes instead: the log's `unfinished` actions are re-sent with their keys (workers return the recorded result
for any they already applied) and the finished ones are reported from their logged outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from core.actions import ApplyResult
from core.plan import Plan
from core.protocols import ActionLog, Clock
from core.status import WorkerStatus
from executors.backends import Observation, WorkerSet
from executors.diff import Damping, Schedule, diff
from executors.report import SATISFIED, ActionRecord, ExecutionReport, made_here
from executors.runner import ActionRunner, RunnerConfig


class PlanExecutor:
    """Carries plans out on a WorkerSet, recording every step in an ActionLog.

    `clock` (optional) paces retry back-off in simulated time; without it back-off sleeps on the wall clock.
    """

    def __init__(self, workers: WorkerSet, log: ActionLog, *, config: RunnerConfig | None = None,
                 damping: Damping = Damping(), clock: Clock | None = None):
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
        """Apply `plan`: diff against `observed` (default: the workers' status now) and the router's `routing`
        (default: the WorkerSet's router), record, run. Resumes instead if the log already knows the plan."""
        if self._known(plan):
            return self.resume(plan)
        started = time.perf_counter()
        observation = self.workers.observe() if observed is None else Observation(tuple(observed))
        routing = routing if routing is not None else self.workers.routing()
        schedule = self.plan_schedule(plan, observation.statuses, routing)
        self.log.record_plan(schedule.record)
        prior: dict[int, ApplyResult] = {}
        records = []
        for s in schedule.satisfied:
            key = s.action.idempotency_key
            prior[s.action.seq] = made_here(key, "applied", SATISFIED, s.reason)
            self.log.record_outcome(key, prior[s.action.seq])
            records.append(ActionRecord.of(s.action, key, s.action.seq, prior[s.action.seq]))
        records += self.runner.run(schedule.actions, prior, observation.unhealthy, schedule.added)
        return ExecutionReport.build(plan.plan_id, records, resumed=False, wall_s=time.perf_counter() - started)

    def resume(self, plan: Plan) -> ExecutionReport:
        """Finish a plan from the log: re-send its unfinished actions; report every action's outcome."""
        started = time.perf_counter()
        unfinished = self.log.unfinished(plan.plan_id)
        pending = {a.seq for a in unfinished}
        known = {a.seq: a for a in plan.actions} | {a.seq: a for a in unfinished}
        prior, records = {}, []
        for seq in sorted(known.keys() | set(self._added_seqs(plan, pending))):
            if seq in pending:
                continue
            key = f"{plan.plan_id}:{seq}"
            result = self.log.outcome(key)
            if result is not None:
                prior[seq] = result
                records.append(ActionRecord.of(known.get(seq), key, seq, result, added=seq not in _seqs(plan)))
        down = self.workers.observe().unhealthy
        added = frozenset(pending - _seqs(plan))
        records += self.runner.run(sorted(unfinished, key=lambda a: a.seq), prior, down, added)
        return ExecutionReport.build(plan.plan_id, records, resumed=True, wall_s=time.perf_counter() - started)

    def _known(self, plan: Plan) -> bool:
        """Whether an execution of `plan` was recorded: it has unfinished actions, or its first action (the
        plan's own, or the first one the executor would add) has an outcome."""
        first = min(_seqs(plan), default=0)
        return bool(self.log.unfinished(plan.plan_id)) or self.log.outcome(f"{plan.plan_id}:{first}") is not None

    def _added_seqs(self, plan: Plan, pending: set[int]) -> list[int]:
        """Seqs the executor added to this plan: numbered from the plan's last seq + 1 without gaps, each either
        unfinished or with an outcome."""
        seqs, seq = [], max(_seqs(plan), default=-1) + 1
        while seq in pending or self.log.outcome(f"{plan.plan_id}:{seq}") is not None:
            seqs.append(seq)
            seq += 1
        return seqs


def _seqs(plan: Plan) -> set[int]:
    return {a.seq for a in plan.actions}


def _clock_sleep(clock: Clock) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        clock.sleep_until(clock.now() + seconds)

    return sleep

