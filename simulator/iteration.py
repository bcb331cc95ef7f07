"""The iteration loop of a simulated GPU: one event per iteration, or per uninterrupted run of decodes.

`IterationLoop` is the part of `SimulatedWorker` that runs batches: it asks the scheduler for a batch, times it with
the replica's LatencyModel (plus KV copies at the host link's bandwidth), and schedules its end. When the scheduler
says the batch may repeat unchanged (`Scheduler.plan_run`: decode-only, nothing else waiting on the device), one
event stands for the whole run; when several models take turns on the GPU and all of them only decode, one event
stands for the whole rotation (`Scheduler.plan_rotation`: the model-choice rule played ahead with these step
times). Anything that could change the next iteration (an arrival, an action, a status read, an activation, a TP
group needing the GPU) first `interrupt`s the run, committing the steps done and leaving the step in flight as a
single iteration — so results are exactly those of scheduling every iteration (tested), at a fraction of the events.
A TP replica's iteration keeps every member GPU busy; their own iterations wait for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.kernel import Priority
from workers.scheduler import Batch, Rotation, Scheduler, Sequence

if TYPE_CHECKING:
    from simulator.worker import SimulatedWorker

MAX_RUN_STEPS = 4096  # longest run of decode iterations one event stands for


class IterationDone:
    """A device finished a batch (or a run of decode batches): record it, start the next one."""

    __slots__ = ("batch", "cancelled", "epoch", "time_s", "worker")
    priority = Priority.ITERATION

    def __init__(self, time_s: float, worker: SimulatedWorker, batch: Batch, epoch: int) -> None:
        self.time_s = time_s
        self.worker = worker
        self.batch = batch
        self.epoch = epoch  # the device's epoch when it started; a GPU that failed since ignores it
        self.cancelled = False  # a run cut short was replaced by the event of its step in flight

    def handle(self) -> IterationDone | None:
        if self.cancelled or self.epoch != self.worker.epoch:
            return None
        return self.worker._finish_iteration(self)


@dataclass(slots=True, eq=False)
class DecodeRun:
    """A decode batch repeated `steps` times from `start_s`: step i (from 0) lasts `first_step_s + i·growth_s`,
    since each step reads one more KV token per sequence (LatencyModel.iteration_s is linear in KV tokens)."""

    event: IterationDone
    start_s: float
    first_step_s: float
    growth_s: float
    steps: int

    def alive(self, sched: Scheduler) -> bool:
        """Its model is still on the device (else there is nothing to commit)."""
        return sched.has_model(self.event.batch.model)

    def end_of(self, j: int) -> float:
        """When step j (1-based) ends."""
        return self.start_s + j * self.first_step_s + self.growth_s * j * (j - 1) / 2

    def steps_done_by(self, t: float) -> int:
        """Steps that have ended at or before `t` (0 … steps)."""
        if t < self.end_of(1):
            return 0
        a, b = self.growth_s / 2, self.first_step_s - self.growth_s / 2
        c = self.start_s - t
        j = int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)) if a > 0 else int((t - self.start_s) / self.first_step_s)
        j = max(0, min(self.steps, j))
        while j < self.steps and self.end_of(j + 1) <= t:
            j += 1
        while j > 0 and self.end_of(j) > t:
            j -= 1
        return j

    def cut(self, sched: Scheduler, now: float) -> tuple[Batch, float | None, float]:
        """Commit the steps done by `now`; the batch of the step in flight, when it was chosen, when it ends."""
        done = self.steps_done_by(now)
        batch = self.event.batch
        if done:
            finished = sched.on_batch_done(batch, self.end_of(done), steps=done)
            assert not finished, "a run ends at the first step that finishes a sequence"
        sched.prepare_step(batch)
        return batch, self.end_of(done), self.end_of(done + 1)

    def complete(self, sched: Scheduler, now: float) -> list[Sequence]:
        done = sched.on_batch_done(self.event.batch, now)
        sched.mark_ran(self.event.batch.model, self.end_of(self.steps - 1))
        return done


@dataclass(slots=True, eq=False)
class RotationRun:
    """Several models' decode batches taking turns, as `Scheduler.plan_rotation` played them ahead."""

    event: IterationDone
    rotation: Rotation

    def alive(self, sched: Scheduler) -> bool:
        return all(sched.has_model(b.model) for b in self.rotation.batches)

    def cut(self, sched: Scheduler, now: float) -> tuple[Batch, float | None, float]:
        rot = self.rotation
        k = rot.steps_done_by(now)
        finished = sched.commit_rotation(rot, k, now)
        assert not finished, "a rotation ends at the first step that finishes a sequence"
        batch = rot.batches[rot.order[k]]
        sched.prepare_step(batch)
        return batch, (rot.turn_s(k) if k else None), rot.ends_s[k]

    def complete(self, sched: Scheduler, now: float) -> list[Sequence]:
        return sched.commit_rotation(self.rotation, self.rotation.num_steps, now)


class IterationLoop:
    """Mixin of SimulatedWorker: starting, timing, cutting and finishing iterations (see the module docstring)."""

    def kick(self) -> None:
        """Start an iteration now if the device is idle and has work."""
        if not self.iterating and self.healthy:
            event = self._start_iteration(self.kernel.now_s)
            if event is not None:
                self.kernel.schedule(event)

    def _start_iteration(self, now: float) -> IterationDone | None:
        sched = self.scheduler
        # Scheduling may take pages that runs in flight counted on: this GPU's, held by a group's run, and (for
        # TP groups led here) every member's, mirrored. Those runs are cut at their step in flight first.
        if self.busy_until_s > now and self._busy_by is not None:
            self._busy_by.interrupt(now)
        if self._tp_members:
            self._cut_member_runs(now)
        batch = sched.schedule(now)
        if sched._dropped:
            self.hooks.on_dropped(sched.take_dropped())
        if batch is None:
            self.iterating = False
            return None
        lm = self._lm.get(batch.model)
        dt = 0.0 if lm is None else lm.iteration_s(prefill_tokens=batch.prefill_tokens, prefill_attn=batch.prefill_attn,
                                                   decode_seqs=len(batch.decodes), kv_tokens=batch.kv_tokens)
        if batch.swap_out or batch.swap_in:
            dt += self._swap_s(batch)
        start = max(now, self.busy_until_s)
        members = self._tp_members.get(batch.model) if self._tp_members else None
        if members:
            start = self._wait_for_members(members, start, now)
        steps, rotation = 1, None
        if lm is not None and not batch.prefills and self.config.run_ahead and self._may_run():
            steps = sched.plan_run(batch, MAX_RUN_STEPS)
            if steps == 1 and all(m.busy_until_s <= start for m in self._all_members()):
                rotation = sched.plan_rotation(batch, start, self._step_timing, MAX_RUN_STEPS)
        if rotation is not None:
            end = rotation.end_s
            event = IterationDone(end, self, batch, self.epoch)
            self._run = RotationRun(event, rotation)
            members = self._all_members()
        elif steps > 1:
            growth = lm.c_kv_s * len(batch.decodes)  # type: ignore[union-attr]
            end = start + steps * dt + growth * steps * (steps - 1) / 2
            event = IterationDone(end, self, batch, self.epoch)
            self._run = DecodeRun(event, start, dt, growth, steps)
        else:
            end = start + dt
            event = IterationDone(end, self, batch, self.epoch)
            self._run = None
        self._hold(members, end)
        self.iterating = True
        return event

    def _may_run(self) -> bool:
        """Runs pay off only where nothing cuts them at once: not for a member's own models (any batch of its
        group's leader could take pages they count on), not while members of groups led here have work of their
        own (their next iteration cuts the run)."""
        return not self.memberships and not (self._tp_members and any(
            m.scheduler.has_runnable_work for m in self._all_members()))

    def _all_members(self) -> tuple[SimulatedWorker, ...]:
        """Members of the TP groups led here (a rotation holds them all); cached until the groups change."""
        if self._members is None:
            self._members = tuple(dict.fromkeys(m for members in self._tp_members.values() for m in members))
        return self._members

    def _step_timing(self, model: str, decode_seqs: int, kv_tokens: int) -> tuple[float, float]:
        """A decode batch's first step and growth per step (Scheduler.plan_rotation's timing)."""
        lm = self._lm[model]
        return (lm.iteration_s(prefill_tokens=0, prefill_attn=0.0, decode_seqs=decode_seqs, kv_tokens=kv_tokens),
                lm.c_kv_s * decode_seqs)

    def _swap_s(self, batch: Batch) -> float:
        per_token = self._swap_s_per_token
        return (sum(per_token.get(t.model, 0.0) * t.num_tokens for t in batch.swap_out)
                + sum(per_token.get(t.model, 0.0) * t.num_tokens for t in batch.swap_in))

    def _cut_member_runs(self, now: float) -> None:
        """Cut the runs in flight that hold the members of the TP groups led here (other groups'; members run no
        runs of their own)."""
        for members in self._tp_members.values():
            for m in members:
                if m.busy_until_s > now and m._busy_by is not None and m._busy_by is not self:
                    m._busy_by.interrupt(now)

    def _wait_for_members(self, members: tuple[SimulatedWorker, ...], start: float, now: float) -> float:
        """A TP batch starts when every member GPU is free (their runs were cut before scheduling)."""
        return max(start, *(m.busy_until_s for m in members))

    def _wake_partners(self) -> None:
        """GPUs sharing a TP group with this one may wait for pages it freed (a mirror frees with its leader)."""
        for members in self._tp_members.values():
            for m in members:
                if not m.iterating and m.scheduler.has_runnable_work:
                    m.kick()
        for membership in self.memberships.values():
            leader = self.hooks.worker(membership.leader)
            if leader is not None and not leader.iterating and leader.scheduler.has_runnable_work:
                leader.kick()

    def _hold(self, members: tuple[SimulatedWorker, ...] | None, until_s: float) -> None:
        self.busy_until_s = until_s
        self._busy_by = None
        for m in members or ():
            m.busy_until_s = until_s
            m._busy_by = self

    def interrupt(self, now: float) -> None:
        """Something may change the next iteration: cut a run of decodes at the step in flight (the steps already
        done are committed; the step in flight ends as a single iteration), exactly as if every step had been
        scheduled on its own."""
        run = self._run
        if run is None:
            return
        self._run = None
        if now >= run.event.time_s:
            return  # the run ends now anyway
        run.event.cancelled = True
        sched = self.scheduler
        if not run.alive(sched):
            self.iterating = False  # a model is gone: nothing to commit
            self.kick()
            return
        batch, turn_s, end_s = run.cut(sched, now)
        if turn_s is not None:
            sched.mark_ran(batch.model, turn_s)
        batch.num_steps = 1
        event = IterationDone(end_s, self, batch, self.epoch)
        if isinstance(run, RotationRun):
            for m in self._all_members():  # free from now unless the step in flight needs them
                m.busy_until_s = min(m.busy_until_s, now)
        self._hold(self._tp_members.get(batch.model), event.time_s)
        self.kernel.schedule(event)

    def _add_intake(self, done: list[Sequence]) -> None:
        """Finished requests reach their clients `Sequence.intake_s` later than their iterations ran: the intake
        before their first iteration, `LatencyModel.admit_s` for a request that reached an idle engine (see
        core.latency; set on arrival). Added here, once per request, as it ends: its TTFT and end-to-end latency
        grow by it, its TPOT and the device's iterations do not change."""
        for seq in done:
            if seq.intake_s and seq.first_token_s is not None and seq.finish_s is not None:
                seq.first_token_s += seq.intake_s
                seq.finish_s += seq.intake_s

    def _finish_iteration(self, event: IterationDone) -> IterationDone | None:
        now = event.time_s
        run, self._run = self._run, None
        if run is not None and run.event is event:
            done = run.complete(self.scheduler, now)
        else:
            done = self.scheduler.on_batch_done(event.batch, now)
        if done:
            self._add_intake(done)
            self.hooks.on_finished(done)
            for model in dict.fromkeys(s.model for s in done):
                draining = self._draining.get(model)
                if draining is not None:
                    self._maybe_finish_drain(draining)
        if self.config.check_invariants:
            self.scheduler.check_invariants()
        event = self._start_iteration(now)
        if self._tp_members or self.memberships:
            self._wake_partners()
        return event
