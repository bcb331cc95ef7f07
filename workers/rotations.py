"""Rotations: runs of decodes when several models take turns on one device.

Several models time-sharing a device take turns every iteration, so their runs are *rotations*: while the models
the rule picks only decode (empty queues, no copies), the model-choice rule (workers.model_choice) depends on
nothing but the models' last turns, targets and the step times, so `plan_rotation` plays it ahead — which model
runs each step, when each step ends — up to the first step that finishes a sequence, given each model's step time
from the executor. Models with queued work or prefills take part in the choice with their due times fixed (they do
not run meanwhile); the rotation ends before the rule would pick one. `commit_rotation` records the steps done
(all of them, or those before a cut: the step in flight then runs as a single iteration). KV blocks are taken at
commit in the order single iterations take them. Same results as scheduling every iteration (tested), one
decision per rotation.

Playing the rule costs a few comparisons per step. When every model that runs is online with the same TPOT target
and the others are offline, the turns are a plain cycle until one of the others falls due, and long cycles are
laid out with numpy in one go (the same sums in the same order, so the same floats).

Pure Python and numpy (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers.decode_runs import DecodeRuns
from workers.scheduler_base import ModelState
from workers.sequence import Batch, KVTransfer, Sequence

CYCLE_ARRAYS_FROM = 48  # plain turns longer than this are played with numpy arrays (shorter: a loop is cheaper)

# (model, decode sequences, KV tokens read) → (first step's time, growth per step: each step reads one more token
# per sequence). The executor's timing of a decode batch, so that a rotation can be played ahead.
StepTiming = Callable[[str, int, int], tuple[float, float]]



@dataclass(slots=True, eq=False)
class Rotation:
    """Decode batches of several models taking turns, planned ahead by `Scheduler.plan_rotation`.

    Step i runs model `batches[order[i]]` until `ends_s[i]`, from the end of the step before (the first from
    `start_s`); each step is chosen when it starts, but the first when `schedule()` ran (`first_turn_s`). The
    rotation's batches other than the first were never built: their `checkpoint` transfers name no device blocks
    (executors that copy KV do not run rotations)."""

    batches: list[Batch]  # one per model taking part, in resident order; one of them `schedule()` returned
    order: list[int]  # index into `batches` of each step
    ends_s: list[float]
    start_s: float
    first_turn_s: float
    totals: list[int]  # steps of each batch in the whole rotation
    final_turns: dict[int, float]  # batch index → when its last step in the whole rotation was chosen

    @property
    def num_steps(self) -> int:
        return len(self.order)

    @property
    def end_s(self) -> float:
        return self.ends_s[-1]

    def steps_done_by(self, t: float) -> int:
        """Steps that have ended at or before `t`."""
        return bisect_right(self.ends_s, t)

    def counts(self, num_steps: int) -> list[int]:
        """Steps of each batch among the first `num_steps`."""
        if num_steps == len(self.order):
            return self.totals
        out = [0] * len(self.batches)
        for i in self.order[:num_steps]:
            out[i] += 1
        return out

    def turn_s(self, k: int) -> float:
        """When step k was chosen."""
        return self.ends_s[k - 1] if k else self.first_turn_s

    def last_turns(self, num_steps: int) -> dict[int, float]:
        """Batch index → when its last step among the first `num_steps` was chosen (batches that ran)."""
        if num_steps == len(self.order):
            return self.final_turns
        out: dict[int, float] = {}
        for k in range(num_steps):
            out[self.order[k]] = self.turn_s(k)
        return out


class Rotations(DecodeRuns):
    """Mixin of `Scheduler`: planning and committing rotations (see the module docstring)."""

    def plan_rotation(self, batch: Batch, start_s: float, timing: StepTiming, max_steps: int) -> Rotation | None:
        """Play the model-choice rule ahead from `batch` (just returned by `schedule`, starting at `start_s`) while
        the models chosen only decode; None when fewer than two steps result. Models with queued work or prefills
        take part in the choice, and the rotation ends before one of them would run. Reserves nothing: the
        executor commits (`commit_rotation`) before anything else touches the device."""
        first = self._models[batch.model]
        # A model alone on the device is plan_run's case; prefills, copies or queued work make no rotation.
        if (max_steps < 2 or self._num_ready < 2 or batch.prefills or not batch.decodes or batch.swap_in
                or batch.swap_out or self._pending_out or len(first.queue)
                or len(batch.decodes) != len(first.running)):
            return None
        ready = [st for st in self._models.values() if st.active and (st.running or len(st.queue))]
        limit = min(self.config.max_num_seqs, self.config.max_num_batched_tokens)
        runs = [st is first or (not st.prefilled and not len(st.queue) and len(st.running) <= limit) for st in ready]
        # Who is chosen after the first step? If a model that does not only decode, there is nothing to play.
        t1 = start_s + timing(batch.model, len(batch.decodes), batch.kv_tokens)[0]
        nxt = min(range(len(ready)), key=lambda k: (*self._urgency(ready[k], t1), k))
        if not runs[nxt]:
            return None
        batches: list[tuple[Batch, int, int] | None] = [
            ((batch, *_decode_stats(batch, st.layout.block_size_tokens, None)) if st is first
             else self._rotation_batch(st)) if r else None for st, r in zip(ready, runs, strict=True)]
        plan = _TurnPlan(self, ready, batches, timing, ready.index(first), start_s)
        rotation = plan.play(max_steps, blocks=False)
        if not self._fits(rotation, plan.slack):
            rotation = plan.play(max_steps, blocks=True)  # takes no new blocks; host room may still lack
            if not self._fits(rotation, plan.slack):
                return None
        return rotation if rotation.num_steps >= 2 else None

    def commit_rotation(self, rotation: Rotation, num_steps: int, now_s: float) -> list[Sequence]:
        """Record the first `num_steps` steps of a rotation (each model's turns, their KV, when each was last
        chosen). Only the rotation's last step can finish sequences; they are returned."""
        done: list[Sequence] = []
        turns = rotation.last_turns(num_steps)
        for i, steps in enumerate(rotation.counts(num_steps)):
            if steps:
                batch = rotation.batches[i]
                if steps == 1:
                    self._grow_decodes(batch, 1)  # never built: its step's KV (on_batch_done grows longer runs)
                done += self.on_batch_done(batch, now_s, steps=steps)
                self._models[batch.model].last_run_s = turns[i]
        return done

    def _rotation_batch(self, st: ModelState) -> tuple[Batch, int, int]:
        """The decode batch `_build` would make of the model's running sequences (no KV taken yet), with its
        `_decode_stats`."""
        self._step += 1
        batch = Batch(st.name, self._step, decodes=list(st.running))
        return batch, *_decode_stats(batch, st.layout.block_size_tokens, self._step)

    def _fits(self, rotation: Rotation, slack: list[int]) -> bool:
        """The pool (and host memory, for checkpoints) can give every batch the KV of its steps at once (`slack`:
        the steps each batch's blocks hold already)."""
        blocks: dict[str, int] = {}
        host_bytes = 0
        for batch, steps, room in zip(rotation.batches, rotation.counts(rotation.num_steps), slack, strict=True):
            if not steps:
                continue
            layout = self._models[batch.model].layout
            bs = layout.block_size_tokens
            if steps > room:
                blocks[batch.model] = sum(max(0, -(-(s.num_computed_tokens + steps) // bs) - len(s.block_table))
                                          for s in batch.decodes)
            if batch.checkpoint:
                host_bytes += layout.block_bytes * sum(layout.num_blocks(t.first_token + steps)
                                                       - layout.num_blocks(t.first_token) for t in batch.checkpoint)
        return ((not blocks or self.pool.can_allocate_all(blocks))
                and self.pool.host_bytes_used + host_bytes <= self.pool.host_capacity_bytes)


def _decode_stats(batch: Batch, block_size: int, step: int | None) -> tuple[int, int]:
    """One pass over a decode batch: its steps up to (and with) the first that finishes a sequence, and the steps
    its sequences' KV blocks hold. With `step` (a batch being made), also its KV tokens, checkpoints and the
    sequences' step."""
    finish = slack = 1 << 62
    kv_tokens = 0
    for seq in batch.decodes:
        computed = seq.num_computed_tokens
        left = seq.max_output_tokens - seq.num_generated
        if left < finish:  # noqa: PLR1730 (a comparison is cheaper than a call in this loop)
            finish = left
        room = len(seq.block_table) * block_size - computed
        if room < slack:  # noqa: PLR1730
            slack = room
        if step is not None:
            seq.scheduled_step = step
            kv_tokens += computed + 1
            if seq.checkpointing:
                batch.checkpoint.append(KVTransfer(seq.seq_id, seq.model, (), computed, 1))
    if step is not None:
        batch.kv_tokens = kv_tokens
    return finish, slack


class _TurnPlan:
    """The model-choice rule (workers.model_choice) played ahead. Models that only decode take turns; the others
    (queued work, prefills) never run here, so their due time and last turn stay as they are: when the rule picks
    one of them, the rotation ends."""

    def __init__(self, sched: Rotations, ready: list[ModelState], batches: list[tuple[Batch, int, int] | None],
                 timing: StepTiming, first: int, start_s: float) -> None:
        cfg = sched.config
        self.first, self.start_s = first, start_s
        self.batches: list[Batch] = []
        self.finish: list[int] = []  # each batch's steps up to (and with) the first that finishes a sequence
        self.slack: list[int] = []  # each batch's steps within the KV blocks it holds
        self.slot: list[int] = []  # ready index → batch index (-1: a model that does not only decode)
        self.gaps: list[float] = []  # models that only decode: due = last turn + gap
        self.dues: list[float] = []  # the others: their due time, fixed
        self.online: list[bool] = []
        for st, entry in zip(ready, batches, strict=True):
            due, online = sched._due(st)
            self.online.append(online)
            self.dues.append(due)
            tpot = st.min_tpot_s if entry is not None else None
            self.gaps.append(cfg.urgency_fraction * tpot if tpot is not None and tpot < math.inf
                             else cfg.offline_period_s)
            self.slot.append(len(self.batches) if entry is not None else -1)
            if entry is not None:
                self.batches.append(entry[0])
                self.finish.append(entry[1])
                self.slack.append(entry[2])
        self.last = [st.last_run_s for st in ready]  # the first model's: when schedule() chose it
        self.timing = [timing(b.model, len(b.decodes), b.kv_tokens) for b in self.batches]
        built = self.slot[first]
        self.slack[built] = max(1, self.slack[built])  # the first batch's first step is built
        self.cycle, self.horizon_s = self._cycle()

    def _cycle(self) -> tuple[list[int] | None, float]:
        """Plain turns: when every model that only decodes is online with the same TPOT gap and every other model
        is offline, the least recently run model always goes next (if one is overdue, it is), until one of the
        others falls due (an overdue model outranks any that is not). Then the turns are a fixed cycle — the
        models by last turn — up to that horizon, and need no comparison."""
        runners = [k for k, i in enumerate(self.slot) if i >= 0]
        others = [k for k, i in enumerate(self.slot) if i < 0]
        if (not all(self.online[k] for k in runners) or len({self.gaps[k] for k in runners}) != 1
                or any(self.online[k] for k in others)):
            return None, -math.inf
        cycle = sorted(runners, key=lambda k: (self.last[k], k))
        return cycle, min((self.dues[k] for k in others), default=math.inf)

    def play(self, max_steps: int, *, blocks: bool) -> Rotation:
        """Steps in turn order, up to the one that finishes a sequence, and before one that the rule gives to a
        model that does not only decode, or that would take a batch past its KV blocks (`blocks`)."""
        room = self.slack if blocks else [math.inf] * len(self.batches)
        last = list(self.last)
        slot, gaps, online, timing, finish = self.slot, self.gaps, self.online, self.timing, self.finish
        due = [last[k] + gaps[k] if slot[k] >= 0 else self.dues[k] for k in range(len(last))]
        # Online and offline models, each by last turn (ties in resident order); the chosen one goes to the back.
        # With none overdue, the front online one wins (else the front offline one); the least recently run of
        # all wins when it is overdue; otherwise the rule decides.
        queues = self._queues(last)
        min_due = min(due)
        done = [0] * len(self.batches)
        order: list[int] = []
        ends: list[float] = []
        cycle, horizon_s = self.cycle or [], self.horizon_s
        pos = 0
        j, t = self.first, self.start_s
        while True:
            i = slot[j]
            first_s, growth_s = timing[i]
            t = t + (first_s + done[i] * growth_s)  # the step's end: when the next is chosen
            order.append(i)
            ends.append(t)
            done[i] += 1
            if done[i] >= finish[i] or len(order) >= max_steps:
                break
            if t < horizon_s and len(order) == 1 and self._long_cycle(max_steps):
                if not self._cycle_segment(t, done, last, room, max_steps, order, ends):
                    break
                t = ends[-1]  # past the horizon now: the rule chooses
                due = [last[k] + gaps[k] if slot[k] >= 0 else due[k] for k in range(len(last))]
                queues = self._queues(last)
                min_due = min(due)
            qon, qoff = queues
            if t < horizon_s:  # plain turns (see _cycle)
                j = cycle[pos]
                pos = pos + 1 if pos + 1 < len(cycle) else 0
            elif t < min_due:
                j = qon[0] if qon else qoff[0]
            else:
                front = qon[0] if not qoff or (qon and (last[qon[0]], qon[0]) < (last[qoff[0]], qoff[0])) else qoff[0]
                j = front if due[front] <= t else self._rule(t, last, due)
            i = slot[j]
            if i < 0 or done[i] >= room[i]:
                break
            queue = queues[0] if online[j] else queues[1]
            if queue[0] == j:
                queue.rotate(-1)
            else:
                queue.remove(j)
                queue.append(j)
            last[j] = t
            old, due[j] = due[j], t + gaps[j]
            if old == min_due:
                min_due = min(due)
        return Rotation(self.batches, order, ends, self.start_s, self.last[self.first], done,
                        {slot[k]: last[k] for k in range(len(last)) if slot[k] >= 0 and done[slot[k]]})

    def _queues(self, last: list[float]) -> tuple[deque[int], deque[int]]:
        """Online and offline models, each by last turn (ties in resident order)."""
        by_last = sorted(range(len(last)), key=lambda k: (last[k], k))
        return (deque(k for k in by_last if self.online[k]), deque(k for k in by_last if not self.online[k]))

    def _rule(self, t: float, last: list[float], due: list[float]) -> int:
        """The model the rule picks at `t`: overdue first, then online, then offline; the least recently run;
        resident order."""
        online = self.online
        j, best_class, best_last = -1, 3, math.inf
        for k in range(len(last)):
            lk = last[k]
            c = 0 if due[k] <= t else 1 if online[k] else 2
            if c < best_class or (c == best_class and lk < best_last):
                j, best_class, best_last = k, c, lk
        return j

    def _long_cycle(self, max_steps: int) -> bool:
        """Worth playing plain turns with arrays: they may last long (before a sequence finishes, every model
        takes up to its finishing step)."""
        return min(max_steps, len(self.cycle or ()) * (min(self.finish) + 1)) > CYCLE_ARRAYS_FROM

    def _cycle_segment(self, t0: float, done: list[int], last: list[float], room: list[float], max_steps: int,
                       order: list[int], ends: list[float]) -> bool:
        """Plain turns after the first step, with arrays: exactly the steps the loop would take (the same sums in
        the same order) while turns are chosen before the horizon. Appends them, updates `done` and `last`;
        False when the rotation ends (a sequence finished, a batch's room, `max_steps`), True when the next turn
        falls past the horizon (the rule then chooses, at `ends[-1]`)."""
        cycle = self.cycle or []
        n = len(cycle)
        limit = min(max_steps - 1, n * (min(self.finish) + 1))
        k = np.arange(limit)
        b = np.asarray([self.slot[j] for j in cycle])[k % n]  # batch of each step after the first
        occ = k // n + np.asarray(done)[b]  # steps that batch has done before this one
        timing = np.asarray(self.timing)
        step_ends = np.cumsum(np.concatenate(([t0], timing[b, 0] + occ * timing[b, 1])))[1:]
        chosen_at = np.concatenate(([t0], step_ends[:-1]))
        # (steps taken, rank, ends): a finishing step is taken; past the horizon the rule chooses, even a model
        # that would lack room; a model without room ends the rotation.
        stops = [(limit, 0, True)]
        for mask, extra, rank, end in ((occ + 1 >= np.asarray(self.finish)[b], 1, 0, True),
                                       (chosen_at >= self.horizon_s, 0, 1, False),
                                       (occ + 1 > np.asarray(room)[b], 0, 2, True)):
            hits = np.flatnonzero(mask)
            if hits.size:
                stops.append((int(hits[0]) + extra, rank, end))
        taken, _, ended = min(stops)
        order.extend(b[:taken].tolist())
        ends.extend(step_ends[:taken].tolist())
        for i, c in enumerate(np.bincount(b[:taken], minlength=len(done)).tolist()):
            done[i] += c
        for p in range(min(n, taken)):  # each model's last turn among the steps taken
            last[cycle[p]] = float(chosen_at[p + n * ((taken - 1 - p) // n)])
        return not ended
