"""An ActionLog held in process memory: for simulations and single-process runs that need no durability.

It keeps the whole `core.protocols.ActionLog` contract except surviving the process; the durable implementation is
`db.action_log.SqlActionLog`. Thread-safe (the runner records outcomes from its worker threads).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from core.actions import Action, ApplyResult
from core.errors import NotFoundError
from core.plan import Plan


@dataclass
class _Entry:
    action: Action
    attempts: int = 0
    outcome: ApplyResult | None = None
    history: list[str] = field(default_factory=list)  # "started:1", "outcome:applied", … in order


class InMemoryActionLog:
    """`record_plan` is idempotent per plan id and per action: recording a plan again adds only the actions whose
    keys are new (the ones an executor added for drift) and leaves recorded ones as they are. An outcome is final
    once recorded (what `unfinished` excludes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._plans: dict[str, list[str]] = {}  # plan_id → keys in seq order

    def record_plan(self, plan: Plan) -> None:
        with self._lock:
            keys = self._plans.setdefault(plan.plan_id, [])
            new = [a for a in plan.actions if a.idempotency_key not in self._entries]
            self._entries.update({a.idempotency_key: _Entry(a) for a in new})
            keys.extend(a.idempotency_key for a in new)
            keys.sort(key=lambda k: self._entries[k].action.seq)

    def mark_started(self, key: str, *, attempt: int) -> None:
        with self._lock:
            entry = self._entry(key)
            entry.attempts = max(entry.attempts, attempt)
            entry.history.append(f"started:{attempt}")

    def record_outcome(self, key: str, result: ApplyResult) -> None:
        with self._lock:
            entry = self._entry(key)
            entry.outcome = result
            entry.history.append(f"outcome:{result.status}")

    def outcome(self, key: str) -> ApplyResult | None:
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.outcome

    def unfinished(self, plan_id: str) -> list[Action]:
        with self._lock:
            keys = self._plans.get(plan_id, [])
            return [self._entries[k].action for k in keys if self._entries[k].outcome is None]

    def attempts(self, key: str) -> int:
        """Attempts started for `key` (all runs)."""
        with self._lock:
            return self._entry(key).attempts

    def history(self, key: str) -> list[str]:
        """Every write for `key`, in order."""
        with self._lock:
            return list(self._entry(key).history)

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            raise NotFoundError("action", key, known=list(self._entries))
        return entry
