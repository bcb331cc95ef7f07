"""What happened to a plan: one record per action and the plan's overall outcome.

The action log stores only `ApplyResult`s, so outcomes that no worker produced are written with a message prefix
that says where they came from; `state_of` reads it back (after a restart the report is rebuilt from the log):

- `satisfied: …` (status applied) — already true at execution time, not sent;
- `skipped: …` (status failed) — a dependency did not succeed, not sent;
- `unreachable: …` (status failed) — the worker did not answer within the timeout, after every retry;
- `not sent: …` (status failed) — the worker was known to be down (unhealthy, no client, or it just stopped
  answering another action), so nothing was sent;
- `not logged: …` (status failed) — an executor-added action the action log could not hold, so it was not sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.actions import Action, ApplyResult, ApplyStatus
from core.state import EventKind, FleetEvent

SATISFIED = "satisfied: "
SKIPPED = "skipped: "
UNREACHABLE = "unreachable: "
NOT_SENT = "not sent: "
NOT_LOGGED = "not logged: "

ActionState = Literal["applied", "deferred", "satisfied", "stale", "conflict", "failed", "unreachable", "skipped"]
PlanOutcome = Literal["applied", "partially_applied", "failed"]
IN_PLACE: frozenset[str] = frozenset({"applied", "deferred", "satisfied"})

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def state_of(result: ApplyResult) -> ActionState:
    """The record state of a logged result (see the module docstring for the prefixes)."""
    for prefix, state in ((SATISFIED, "satisfied"), (SKIPPED, "skipped"), (UNREACHABLE, "unreachable"),
                          (NOT_SENT, "unreachable"), (NOT_LOGGED, "failed")):
        if result.message.startswith(prefix):
            return state  # type: ignore[return-value]
    return result.status


def made_here(key: str, status: ApplyStatus, prefix: str, message: str, *, retriable: bool = False) -> ApplyResult:
    """An outcome the executor writes itself (no worker answered it)."""
    return ApplyResult(idempotency_key=key, status=status, message=prefix + message, retriable=retriable)


class ActionRecord(BaseModel):
    """One action's fate in an execution (`worker_id` None: the fleet router)."""

    model_config = _FROZEN
    seq: int
    idempotency_key: str
    kind: str
    worker_id: str | None
    state: ActionState
    status: ApplyStatus
    message: str = ""
    attempts: int = Field(default=0, description="Sends in this execution (0: not sent by it).")
    reason: str = Field(default="", description="Why the plan (or the executor) wanted it.")
    added_by_executor: bool = False
    duration_s: float = 0.0

    @classmethod
    def of(cls, action: Action, result: ApplyResult, *, attempts: int = 0, added: bool = False) -> ActionRecord:
        return cls(seq=action.seq, idempotency_key=action.idempotency_key, kind=action.kind,
                   worker_id=action.worker_id, state=state_of(result), status=result.status, message=result.message,
                   attempts=attempts, reason=action.reason, added_by_executor=added, duration_s=result.duration_s)

    @property
    def in_place(self) -> bool:
        return self.state in IN_PLACE


class ExecutionReport(BaseModel):
    """A plan's execution: `applied` (every action's effect is in place), `partially_applied` (some are) or
    `failed` (none). `needs_replan` tells the controller to plan again around `unreachable_workers` and the
    failures listed in `replan_reasons`; stale actions mean a newer plan already took over and need no replan."""

    model_config = _FROZEN
    plan_id: str
    outcome: PlanOutcome
    actions: tuple[ActionRecord, ...]
    unreachable_workers: tuple[str, ...] = ()
    needs_replan: bool = False
    replan_reasons: tuple[str, ...] = ()
    resumed: bool = Field(default=False, description="Some outcomes came from an earlier execution's log.")
    wall_s: float = 0.0

    @classmethod
    def build(cls, plan_id: str, records: Iterable[ActionRecord], *, resumed: bool, wall_s: float) -> ExecutionReport:
        ordered = tuple(sorted(records, key=lambda r: r.seq))
        bad = [r for r in ordered if not r.in_place]
        outcome: PlanOutcome = "applied" if not bad else "partially_applied" if len(bad) < len(ordered) else "failed"
        unreachable = sorted({r.worker_id for r in bad if r.state == "unreachable" and r.worker_id})
        reasons = tuple(f"seq {r.seq} {r.kind} on {r.worker_id or 'router'}: {r.state}: {r.message}"
                        for r in bad if r.state != "stale")
        return cls(plan_id=plan_id, outcome=outcome, actions=ordered, unreachable_workers=tuple(unreachable),
                   needs_replan=bool(reasons), replan_reasons=reasons, resumed=resumed, wall_s=wall_s)

    def by_state(self, *states: ActionState) -> list[int]:
        """Seqs of the actions in any of `states`."""
        return [r.seq for r in self.actions if r.state in states]

    def record(self, seq: int) -> ActionRecord:
        return next(r for r in self.actions if r.seq == seq)

    def events(self, time_s: float) -> list[FleetEvent]:
        """`action_failed` events for the controller's next FleetState (one per action that did not take effect)."""
        return [FleetEvent(EventKind.ACTION_FAILED, time_s, worker_id=r.worker_id,
                           detail=f"{r.idempotency_key} {r.kind} {r.state}: {r.message}")
                for r in self.actions if not r.in_place and r.state != "stale"]
