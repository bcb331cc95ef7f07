"""Carrying out a plan inside the simulation: actions start when every action they depend on has succeeded, and
succeed `ApplyResult.duration_s` after they are applied (an activation: when the weights are loaded). A deactivation
answered `deferred` (a drain) succeeds when its worker reports the drain done, plus its weight copy; a cancelled
drain (the replica was activated again) ends it as failed without an ACTION_FAILED event. Other `deferred` answers
(a KV shrink, which refuses new pages at once) let dependents start immediately.

A failed, stale or conflicting action raises ACTION_FAILED and its dependents never start (counted `skipped`).
A new plan supersedes the old one: its actions not yet started are dropped (counted `superseded`). Every outcome
is counted by (kind, status) in the run's metrics. This is the simulator's own small executor: the executors
package serves real fleets and the simulator may not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.actions import Action, ApplyResult
from core.plan import Plan
from core.state import EventKind, FleetEvent
from simulator.events import ActionDone

if TYPE_CHECKING:
    from simulator.fleet import FleetSimulation


class PlanRunner:
    """Runs the current plan's actions in dependency order."""

    def __init__(self, sim: FleetSimulation) -> None:
        self.sim = sim
        self.plan: Plan | None = None
        self._actions: dict[int, Action] = {}
        self._status: dict[int, str] = {}  # seq → "running" | "ok" | "failed"
        self.instant = False  # the initial deployment: durations are taken as already elapsed

    def adopt(self, plan: Plan, *, instant: bool = False) -> None:
        self._close("superseded")
        self.plan = plan
        self._actions = {a.seq: a for a in plan.actions}
        self._status = {}
        self.instant = instant
        try:
            self._start_ready()
        finally:
            self.instant = False

    def complete(self, plan_id: str, seq: int) -> None:
        if self.plan is None or plan_id != self.plan.plan_id or self._status.get(seq) != "running":
            return
        self._status[seq] = "ok"
        self._start_ready()

    def settle(self, key: str, *, ok: bool, after_s: float) -> None:
        """A deferred deactivation ended (FleetHooks.drain_settled): succeed after its weight copy, or fail."""
        plan_id, _, seq_text = key.rpartition(":")
        seq = int(seq_text)
        if self.plan is None or plan_id != self.plan.plan_id or self._status.get(seq) != "running":
            return
        if not ok:
            self._status[seq] = "failed"
            self.sim.metrics.actions[(self._actions[seq].kind, "cancelled")] += 1
            return
        # An event even for no copy time: the worker calling here is in the middle of its own bookkeeping.
        self.sim.kernel.schedule(ActionDone(self.sim.kernel.now_s + after_s, self.sim, plan_id, seq))

    def finish(self) -> None:
        """The run ended: count actions that never started."""
        self._close("not_started")

    def _close(self, why: str) -> None:
        for seq, action in self._actions.items():
            if seq not in self._status:
                blocked = any(self._status.get(d) == "failed" for d in action.depends_on)
                self.sim.metrics.actions[(action.kind, "skipped" if blocked else why)] += 1

    def _start_ready(self) -> None:
        progress = True
        while progress:
            progress = False
            for seq in sorted(self._actions):
                if seq in self._status:
                    continue
                action = self._actions[seq]
                if all(self._status.get(d) == "ok" for d in action.depends_on):
                    self._start(action)
                    progress = True

    def _start(self, action: Action) -> None:
        result = self.sim.apply(action)
        self.sim.metrics.actions[(action.kind, result.status)] += 1
        if not result.ok:
            self._status[action.seq] = "failed"
            self.sim.raise_event(FleetEvent(EventKind.ACTION_FAILED, self.sim.kernel.now_s, worker_id=action.worker_id,
                                            detail=f"{action.kind} {action.idempotency_key}: {result.message}"))
            return
        if result.status == "deferred" and action.kind == "deactivate_model":
            self._status[action.seq] = "running"  # until the worker settles it (see settle)
            return
        if result.duration_s <= 0 or self.instant:
            self._status[action.seq] = "ok"
            return
        self._status[action.seq] = "running"
        assert self.plan is not None
        self.sim.kernel.schedule(ActionDone(self.sim.kernel.now_s + result.duration_s, self.sim, self.plan.plan_id,
                                            action.seq))


def router_result(action: Action, status: str, message: str = "") -> ApplyResult:
    return ApplyResult(idempotency_key=action.idempotency_key, status=status, message=message,  # type: ignore[arg-type]
                       worker_revision=action.revision)
