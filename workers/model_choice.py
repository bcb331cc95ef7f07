"""Which model runs next when several time-share a device (one model's batch per iteration).

Each model with runnable work has a due time — for its queue head (its first online sequence, if any) the arrival
plus `urgency_fraction` of the TTFT target, for its running online sequences the start of its last iteration plus
that fraction of the smallest TPOT target, and for offline-only work `offline_period_s` after it last ran. Models whose work is overdue run first, then
models with online work, then offline-only models; within each class models take turns (the one that ran least
recently goes next). So a new request is admitted within an iteration or two, every model's decodes keep moving, a
model falling behind its targets gets more turns, and no model starves — not even under overload, where
earliest-deadline-first would let one hopeless queue head block the rest. Offline-only models run on leftover turns
or once their period is overdue.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

import math

from workers.scheduler_base import ModelState, SchedulerBase


class ModelChoice(SchedulerBase):
    """Mixin of `Scheduler`: the model-choice rule (see the module docstring)."""

    def _by_urgency(self, now_s: float) -> list[ModelState]:
        ready = [st for st in self._models.values() if st.active and (st.running or len(st.queue))]
        self._num_ready = len(ready)
        if len(ready) > 1:
            ready.sort(key=lambda st: self._urgency(st, now_s))
        return ready

    def _urgency(self, st: ModelState, now_s: float) -> tuple[int, float]:
        """Sort key of the model-choice rule (module docstring): overdue, then online, then offline work; turns
        within each class."""
        due, online = self._due(st)
        return (0 if due <= now_s else 1 if online else 2, st.last_run_s)

    def _due(self, st: ModelState) -> tuple[float, bool]:
        """When the model's work is due, and whether it is online work."""
        cfg = self.config
        due, online = math.inf, False
        head = st.queue.peek_online() or st.queue.peek()  # online work queued behind offline work is still due
        if head is not None:
            ttft = head.ttft_deadline_s - head.arrival_s
            if ttft < math.inf:
                online, due = True, head.arrival_s + cfg.urgency_fraction * ttft
            else:
                due = st.last_run_s + cfg.offline_period_s
        if st.running:
            tpot = st.online_tpot_s()
            if tpot < math.inf:
                online = True
                running_due = st.last_run_s + cfg.urgency_fraction * tpot
            else:
                running_due = st.last_run_s + cfg.offline_period_s
            due = min(due, running_due)
        return due, online

    def mark_ran(self, model: str, start_s: float) -> None:
        """The start of a model's latest iteration, when a run of repeated batches ends (the model-choice rule)."""
        self._state(model).last_run_s = start_s
