"""Running a set of ordered actions: bounded concurrency, per-worker serialisation, dependency gating.

Invariants:
- an action starts only after every dependency's outcome is *recorded* in the action log (`record_outcome`
  returns before the dependency's slot is released), so a restarted executor never sees a dependent that ran
  ahead of an unrecorded dependency;
- a dependent of an action that did not take effect (failed, stale, conflict, unreachable, skipped) is not sent;
  it is recorded as skipped with the dependency named;
- with `serialise_per_worker`, one action at a time per worker (and one at a time for the router): engines apply
  control actions one by one, and order on one GPU matters (free before load);
- once a worker fails in transport after every retry, its remaining actions are not sent (they fail at once
  instead of each waiting out its own timeouts);
- a `deferred` answer (a draining deactivation, a KV shrink below use) releases dependents that take memory (an
  activation, a KV grow) only once the worker's status shows it complete (`executors.settle`), within
  `settle_timeout_s`; other dependents (routing, queue orders) go on at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from graphlib import TopologicalSorter

from core.actions import Action, ApplyResult
from core.errors import InputError
from core.protocols import ActionLog
from executors.attempt import Applier, RetryPolicy, Sent, send
from executors.report import NOT_SENT, SKIPPED, ActionRecord, made_here
from executors.settle import needs_memory, wait_until_settled

ROUTER = "router"


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """How actions are dispatched. `max_concurrency=1` runs them one by one in plan order (deterministic, as a
    simulation needs)."""

    max_concurrency: int = 8
    serialise_per_worker: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    settle_timeout_s: float = 900.0  # how long a memory-taking dependent waits for a deferred drain/shrink

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise InputError("runner.max_concurrency", self.max_concurrency, "an integer ≥ 1")
        if not self.settle_timeout_s > 0:
            raise InputError("runner.settle_timeout_s", self.settle_timeout_s, "a positive number of seconds")


@dataclass
class _Slots:
    """Which workers are busy and which are down, during one run."""

    busy: set[str] = field(default_factory=set)
    down: dict[str, str] = field(default_factory=dict)  # worker → why


class ActionRunner:
    """Runs actions whose dependencies are either among them or already decided (`prior` outcomes).

    `targets(worker_id)` returns where to send an action (None: no client for that worker); `down` names workers
    known not to answer (with why), whose actions are recorded as failed without being sent.
    """

    def __init__(self, targets: Callable[[str | None], Applier | None], log: ActionLog, config: RunnerConfig,
                 sleep: Callable[[float], None] | None = None):
        self.targets, self.log, self.config, self.sleep = targets, log, config, sleep
        self._awaited: set[int] = set()  # seqs that other actions of the current run depend on

    def run(self, actions: Sequence[Action], prior: Mapping[int, ApplyResult],
            down: Mapping[str, str] | None = None, added: frozenset[int] = frozenset()) -> list[ActionRecord]:
        by_seq = {a.seq: a for a in actions}
        self._awaited = {d for a in actions if needs_memory(a) for d in a.depends_on if d in by_seq}
        results: dict[int, ApplyResult] = dict(prior)
        records: dict[int, ActionRecord] = {}
        slots = _Slots(down=dict(down or {}))
        sorter = TopologicalSorter({a.seq: {d for d in a.depends_on if d in by_seq} for a in actions})
        sorter.prepare()
        ready: list[int] = []
        in_flight: dict[Future[Sent], int] = {}
        with ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix="fleetwise-exec") as pool:
            while sorter.is_active():
                ready = sorted(set(ready) | set(sorter.get_ready()))
                for seq in list(ready):
                    action = by_seq[seq]
                    settled = self._settle_without_sending(action, results, slots)
                    if settled is not None:
                        self._finish(action, Sent(settled, 0, False), results, records, added)
                        sorter.done(seq)
                        ready.remove(seq)
                    elif self._may_start(action, slots, len(in_flight)):
                        slots.busy.add(_slot(action))
                        in_flight[pool.submit(self._send, action)] = seq
                        ready.remove(seq)
                if not in_flight:
                    continue
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    action = by_seq[in_flight.pop(future)]
                    sent = future.result()
                    self._finish(action, sent, results, records, added)
                    if sent.unreachable:
                        slots.down[_slot(action)] = f"it did not answer {action.idempotency_key}"
                    slots.busy.discard(_slot(action))
                    sorter.done(action.seq)
        return [records[s] for s in sorted(records)]

    def _send(self, action: Action) -> Sent:
        target = self.targets(action.worker_id)
        assert target is not None  # checked in _settle_without_sending
        sent = send(action, target, self.log, self.config.retry, self.sleep)
        if sent.result.status == "deferred" and action.seq in self._awaited and hasattr(target, "status"):
            settled = wait_until_settled(action, sent.result, target, timeout_s=self.config.settle_timeout_s)
            return Sent(settled, sent.attempts, sent.unreachable)
        return sent

    def _settle_without_sending(self, action: Action, results: Mapping[int, ApplyResult],
                                slots: _Slots) -> ApplyResult | None:
        """The outcome of an action that must not be sent (a dependency failed, its worker is down), or None."""
        key = action.idempotency_key
        for dep in action.depends_on:
            result = results.get(dep)
            if result is None or not result.ok:
                what = "has no recorded outcome" if result is None else f"ended {result.status}: {result.message}"
                return made_here(key, "failed", SKIPPED, f"depends on seq {dep}, which {what}")
        worker = _slot(action)
        if worker in slots.down:
            return made_here(key, "failed", NOT_SENT, f"worker {worker} is down: {slots.down[worker]}",
                             retriable=True)
        if self.targets(action.worker_id) is None:
            return made_here(key, "failed", NOT_SENT, f"no client for worker {worker}")
        return None

    def _may_start(self, action: Action, slots: _Slots, num_in_flight: int) -> bool:
        if num_in_flight >= self.config.max_concurrency:
            return False
        return not (self.config.serialise_per_worker and _slot(action) in slots.busy)

    def _finish(self, action: Action, sent: Sent, results: dict[int, ApplyResult],
                records: dict[int, ActionRecord], added: frozenset[int]) -> None:
        # Durable before any dependent can be considered: the contract restarts rely on.
        self.log.record_outcome(action.idempotency_key, sent.result)
        results[action.seq] = sent.result
        records[action.seq] = ActionRecord.of(action, sent.result, attempts=sent.attempts, added=action.seq in added)


def _slot(action: Action) -> str:
    return action.worker_id if action.worker_id is not None else ROUTER
