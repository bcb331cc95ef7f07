"""Continuous batching for one device shared by several models: chunked prefill, SLO classes, priorities, preemption.

The contract between the scheduler and whatever executes its batches (the torch engine or the simulator):

1. `add(seq)` queues a sequence of a model added with `add_model`.
2. `schedule(now_s)` returns the next `Batch` — the work of ONE model (a GPU time-shares its resident models, one
   model's batch per iteration) — or None when nothing can run. `take_dropped()` then returns sequences the
   scheduler gave up on (they can never fit the KV memory).
3. The executor performs the batch's `swap_out` and `swap_in` copies, runs the forward pass over its prefill chunks
   and decode sequences, copies `checkpoint` KV to host, and calls `on_batch_done(batch, now_s, finished=...)`. The
   executor decides when a sequence ends (the engine: EOS or max tokens; the simulator: the known output length
   when `finished` is None). Sequences always end at `max_output_tokens`.
4. Between batches, actions (`preempt`, `swap_out`, `swap_in`, `pause_offline`, `resume_offline`,
   `set_queue_order`, `remove`, `drop`) change the queues; copies they need ride on the next batch.
5. Optionally, `plan_run(batch, max_steps)` lets an executor repeat a decode-only batch while nothing else can
   change the next iteration (the simulator's one event per run of decodes; see the method).

The messages and settings live in `workers.sequence` (re-exported here). The `Scheduler` class is one concept and
stays in one module, longer than most, because the engine and the simulator share it file for file.

Which model runs next (documented rule): each model with runnable work has a due time — for its queue head the
arrival plus `urgency_fraction` of the TTFT target, for its running online sequences the start of its last
iteration plus that fraction of the smallest TPOT target, and for offline-only work `offline_period_s` after it last
ran. Models whose work is overdue run first, then models with online work, then offline-only models; within each
class models take turns (the one that ran least recently goes next). So a new request is admitted within an
iteration or two, every model's decodes keep moving, a model falling behind its targets gets more turns, and no
model starves — not even under overload, where earliest-deadline-first would let one hopeless queue head block
the rest. Offline-only models run on leftover turns or once their period is overdue.

Inside one model's batch (vLLM v1 style): running sequences first, in admission order (a decode is one token, an
unfinished prefill continues in chunks), then queued sequences in the queue policy's order (`fcfs`, `priority`,
`edf` by TTFT deadline, `explicit` group order; see core.actions.SetQueueOrder) while the token budget
(`max_num_batched_tokens`), `max_num_seqs` and KV pages allow. A queued sequence that does not fit stops
admission (no overtaking), unless a running sequence of strictly lower priority can be preempted for it: under
the `priority` policy any such sequence (vLLM's priority scheduling), under the others only offline work when the
queued sequence is online (ConServe).

Preemption: when a running sequence cannot grow, the lowest-priority, latest-arrived running sequence (of the same
model if its page limit binds, of any model on the device if the pool is full) is preempted — possibly the
sequence itself. Offline sequences checkpoint each step's new KV to host (ConServe), so preempting them is free and
resuming recomputes nothing. Others are swapped to host when copying out and back is cheaper than recomputing
(`PreemptionCosts.prefer_swap`) and host memory has room, else their KV is dropped and recomputed later.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from core.actions import PreemptMode
from core.errors import InputError
from workers.kv_pool import KVLayout, KVPool
from workers.sequence import (
    PENDING_STATUSES,
    QUEUE_POLICIES,
    Batch,
    KVTransfer,
    PreemptionCosts,
    PrefillChunk,
    QueuePolicy,
    SchedulerConfig,
    SeqStatus,
    Sequence,
    WaitQueue,
)

__all__ = [
    "QUEUE_POLICIES", "Batch", "KVTransfer", "PreemptionCosts", "PrefillChunk", "QueuePolicy", "Scheduler",
    "SchedulerConfig", "SeqStatus", "Sequence", "WaitQueue",
]

RUNNING = SeqStatus.RUNNING
DROP_EXCEEDS_KV = "exceeds_kv_capacity"


@dataclass(slots=True, eq=False)
class _ModelState:
    name: str
    layout: KVLayout
    queue: WaitQueue
    costs: PreemptionCosts | None
    active: bool = True
    running: list[Sequence] = field(default_factory=list)  # in admission order
    held: dict[int, Sequence] = field(default_factory=dict)  # paused / swapped out by actions
    last_run_s: float = -math.inf
    min_tpot_s: float | None = None  # cache over running online sequences; None: recompute

    @property
    def has_work(self) -> bool:
        return bool(self.running) or bool(len(self.queue))


class Scheduler:
    """Schedules the resident models of one device over one shared `KVPool` (see the module docstring)."""

    def __init__(self, pool: KVPool, config: SchedulerConfig | None = None) -> None:
        self.pool = pool
        self.config = config or SchedulerConfig()
        self._models: dict[str, _ModelState] = {}
        self._seqs: dict[int, Sequence] = {}  # every live sequence (not finished or dropped)
        self._step = 0
        self._now_s = -math.inf
        self._pending_out: list[KVTransfer] = []  # swap-outs ordered by actions, copied with the next batch
        self._dropped: list[Sequence] = []
        self._building: Batch | None = None
        self._num_ready = 0  # models with runnable work at the last schedule()
        self.num_preemptions = 0

    # -- models ------------------------------------------------------------------------------------------------
    def add_model(self, model: str, layout: KVLayout, *, limit_pages: int | None = None, revision: int = 0,
                  active: bool = True, policy: QueuePolicy = "fcfs",
                  preemption_costs: PreemptionCosts | None = None) -> None:
        """Make a model resident: its KV joins the pool, its sequences may be queued. `active=False` queues them
        without running them (weights still loading)."""
        if model in self._models:
            raise InputError("model", model, "a model not yet resident on this device")
        self.pool.add_model(model, layout, limit_pages=limit_pages, revision=revision)
        self._models[model] = _ModelState(model, layout, WaitQueue(policy), preemption_costs, active)

    def set_active(self, model: str, active: bool) -> None:
        """Start (or stop) running a model's batches; its queue is kept either way."""
        self._state(model).active = active

    def remove_model(self, model: str) -> list[Sequence]:
        """Forget a model; returns its remaining sequences, removed (device KV freed, host copies dropped)."""
        st = self._state(model)
        seqs = self.remove([s.seq_id for s in self.sequences(model)])
        self.pool.remove_model(model)
        del self._models[model]
        assert not st.running
        return seqs

    def has_model(self, model: str) -> bool:
        return model in self._models

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._models)

    def is_active(self, model: str) -> bool:
        return self._state(model).active

    # -- sequences ---------------------------------------------------------------------------------------------
    def add(self, seq: Sequence, *, kv_on_host: bool = False) -> None:
        """Queue a sequence. A sequence arriving with progress (migrated) keeps it when `kv_on_host` and host memory
        has room (it is then swapped in); otherwise its computed KV is recomputed."""
        st = self._state(seq.model)
        if seq.seq_id in self._seqs:
            raise InputError("seq_id", seq.seq_id, "an id not already queued on this device")
        seq.block_table = []
        seq.held = False
        if not seq.num_computed_tokens:
            seq.checkpointing = not seq.online and self.pool.host_capacity_bytes > 0
        if seq.num_computed_tokens and kv_on_host and self.pool.store_host(seq.model, seq.seq_id, seq.num_computed_tokens):
            seq.status = SeqStatus.PAUSED_OFFLINE if seq.checkpointing else SeqStatus.SWAPPED
        else:
            if seq.num_computed_tokens:
                seq.num_recomputed_tokens += seq.num_computed_tokens
                seq.num_computed_tokens = 0
            seq.status = SeqStatus.PREEMPTED if seq.num_generated else SeqStatus.WAITING
            seq.checkpointing = not seq.online and self.pool.host_capacity_bytes > 0
        self._seqs[seq.seq_id] = seq
        st.queue.push(seq)

    def get(self, seq_id: int) -> Sequence | None:
        return self._seqs.get(seq_id)

    def sequences(self, model: str | None = None) -> list[Sequence]:
        """Live sequences (of one model, or all) in id order."""
        return sorted((s for s in self._seqs.values() if model is None or s.model == model), key=lambda s: s.seq_id)

    def queued(self, model: str) -> Iterator[Sequence]:
        """Sequences waiting for admission (not held), in no particular order."""
        return iter(self._state(model).queue)

    def num_running(self, model: str | None = None) -> int:
        return sum(len(st.running) for st in self._states(model))

    def num_queued(self, model: str | None = None) -> int:
        return sum(len(st.queue) for st in self._states(model))

    def num_with_status(self, status: SeqStatus, model: str | None = None) -> int:
        return sum(1 for s in self._seqs.values() if s.status is status and (model is None or s.model == model))

    @property
    def num_sequences(self) -> int:
        return len(self._seqs)

    def num_live(self, model: str) -> int:
        """Sequences of a model still on this device: running, queued or held."""
        st = self._state(model)
        return len(st.running) + len(st.queue) + len(st.held)

    @property
    def has_runnable_work(self) -> bool:
        """Some active model has running or queued sequences (a `schedule()` may return a batch)."""
        return bool(self._pending_out) or any(st.active and st.has_work for st in self._models.values())

    def take_dropped(self) -> list[Sequence]:
        """Sequences dropped since the last call (status DROPPED, `drop_reason` set)."""
        dropped, self._dropped = self._dropped, []
        return dropped

    # -- scheduling --------------------------------------------------------------------------------------------
    def schedule(self, now_s: float) -> Batch | None:
        """The next iteration's batch, or None when no model can run now (see the module docstring)."""
        self._advance(now_s)
        batch: Batch | None = None
        free_before = -1
        # Another pass when one freed pages (dropped sequences) without running anything: a model tried earlier
        # may fit now. Terminates: each extra pass needs more free pages than the one before.
        while batch is None and self.pool.num_free_pages > free_before:
            free_before = self.pool.num_free_pages
            for st in self._by_urgency(now_s):
                built = self._build(st)
                if built.has_compute:
                    st.last_run_s = now_s
                    batch = built
                    break
        if batch is None:
            if not self._pending_out:
                return None
            self._step += 1
            batch = Batch("", self._step)
        batch.swap_out[:0] = self._pending_out
        self._pending_out = []
        return batch

    def on_batch_done(self, batch: Batch, now_s: float, *, finished: Collection[int] | None = None,
                      token_ids: Mapping[int, int] | None = None, steps: int | None = None) -> list[Sequence]:
        """Record an executed batch: computed tokens advance, each caught-up sequence gains one output token
        (`token_ids[seq_id]` when given), and sequences end at `max_output_tokens` or when listed in `finished`.
        Sequences preempted, removed or dropped since the batch was scheduled are skipped. Returns the finished.

        `steps` (default `batch.num_steps`) commits that many repetitions of a decode-only batch from `plan_run`,
        each decode gaining one token per step (executors that report `finished` or `token_ids` run one step)."""
        self._advance(now_s)
        steps = batch.num_steps if steps is None else steps
        if steps != 1 and (finished is not None or token_ids is not None or batch.prefills):
            raise ValueError("only a decode-only batch without per-token outcomes commits several steps")
        done: list[Sequence] = []
        step = batch.step
        for seq, start, n in batch.prefills:
            if seq.status is RUNNING and seq.scheduled_step == step:
                seq.num_computed_tokens = start + n
                if start + n == seq.prompt_tokens + seq.num_generated and self._emit(seq, now_s, finished, token_ids):
                    done.append(seq)
        if finished is None and token_ids is None:
            if steps > 1:
                self._grow_decodes(batch, steps)  # the run's KV, checked free by plan_run
            for seq in batch.decodes:  # the simulator's path, kept lean
                if seq.status is RUNNING and seq.scheduled_step == step:
                    seq.num_computed_tokens += steps
                    seq.num_generated += steps
                    if seq.num_generated >= seq.max_output_tokens:
                        seq.status = SeqStatus.FINISHED
                        seq.finish_s = now_s
                        done.append(seq)
        else:
            for seq in batch.decodes:
                if seq.status is RUNNING and seq.scheduled_step == step:
                    seq.num_computed_tokens += 1
                    if self._emit(seq, now_s, finished, token_ids):
                        done.append(seq)
        for t in batch.checkpoint:
            seq = self._seqs.get(t.seq_id)
            if seq is not None and seq.status is RUNNING and seq.checkpointing:
                self._checkpoint(seq)
        if done:
            self._retire(batch.model, done)
        return done

    def plan_run(self, batch: Batch, max_steps: int) -> int:
        """How many times the executor may repeat `batch` before scheduling again, with the same result as
        scheduling every iteration; sets `batch.num_steps` and reserves the KV those steps need.

        A batch repeats only while nothing could change the next iteration's choice: it is decode-only, with no
        copies to make, its model the only one on the device with work and an empty queue. It stops at the first
        step that finishes a sequence, and before the KV it needs (device, or host for offline checkpoints) runs
        out. The simulator uses this to run one event per uninterrupted run of decodes (vLLM's multi-step
        scheduling does the same on a GPU); whoever interrupts a run early commits the steps done
        (`on_batch_done(steps=…)`) and calls `prepare_step` for the step in flight."""
        batch.num_steps = 1
        if (max_steps < 2 or batch.prefills or not batch.decodes or batch.swap_in or batch.swap_out
                or self._pending_out):
            return 1
        st = self._models[batch.model]
        if len(st.queue) or self._num_ready > 1:
            return 1
        steps = min(max_steps, min(s.max_output_tokens - s.num_generated for s in batch.decodes))
        if steps > 1 and batch.checkpoint and not self._host_room(batch, steps):
            steps = 1
        if steps > 1:
            steps = self._reserve_steps(st, batch.decodes, steps)
        batch.num_steps = steps
        return steps

    def _reserve_steps(self, st: _ModelState, decodes: list[Sequence], steps: int) -> int:
        """`steps` if the pool can give every sequence KV for that many decode steps, else the steps that fit in
        the blocks they hold. Nothing is allocated here: nothing else can allocate on this device before the run
        is committed (an interruption commits first), so the blocks are taken when the steps are committed."""
        bs = st.layout.block_size_tokens
        free_steps = min(len(s.block_table) * bs - s.num_computed_tokens for s in decodes)
        if steps <= free_steps:
            return steps
        need = sum(max(0, -(-(s.num_computed_tokens + steps) // bs) - len(s.block_table)) for s in decodes)
        return steps if self.pool.can_allocate(st.name, need) else max(1, free_steps)

    def _host_room(self, batch: Batch, steps: int) -> bool:
        layout = self._models[batch.model].layout
        grow = sum(layout.num_blocks(t.first_token + steps) - layout.num_blocks(t.first_token)
                   for t in batch.checkpoint)
        return self.pool.host_bytes_used + grow * layout.block_bytes <= self.pool.host_capacity_bytes

    def prepare_step(self, batch: Batch) -> None:
        """After a run was cut short and its done steps committed: KV for the decode step still in flight."""
        self._grow_decodes(batch, 1)

    def _grow_decodes(self, batch: Batch, ahead: int) -> None:
        pool, bs, step = self.pool, self._models[batch.model].layout.block_size_tokens, batch.step
        for seq in batch.decodes:
            need = seq.num_computed_tokens + ahead
            if seq.status is RUNNING and seq.scheduled_step == step and need > len(seq.block_table) * bs:
                if not pool.allocate(seq.model, seq.seq_id, need):
                    raise RuntimeError("KV checked by plan_run was taken during the run")
                seq.block_table = pool.block_table(seq.seq_id)

    def mark_ran(self, model: str, start_s: float) -> None:
        """The start of a model's latest iteration, when a run of repeated batches ends (the model-choice rule)."""
        self._state(model).last_run_s = start_s

    def _emit(self, seq: Sequence, now_s: float, finished: Collection[int] | None,
              token_ids: Mapping[int, int] | None) -> bool:
        seq.num_generated += 1
        if seq.first_token_s is None:
            seq.first_token_s = now_s
        if token_ids is not None:
            seq.output_token_ids.append(token_ids[seq.seq_id])
        if seq.num_generated >= seq.max_output_tokens or (finished is not None and seq.seq_id in finished):
            seq.status = SeqStatus.FINISHED
            seq.finish_s = now_s
            return True
        return False

    def _retire(self, model: str, done: list[Sequence]) -> None:
        pool = self.pool
        for seq in done:
            pool.free(seq.seq_id)
            pool.drop_host(seq.seq_id)
            seq.block_table = []
            del self._seqs[seq.seq_id]
        st = self._models[model]
        st.running = [s for s in st.running if s.status is RUNNING]
        st.min_tpot_s = None

    def _checkpoint(self, seq: Sequence) -> None:
        if not self.pool.store_host(seq.model, seq.seq_id, seq.num_computed_tokens):
            seq.checkpointing = False  # host memory full: this sequence falls back to swap / recompute
            self.pool.drop_host(seq.seq_id)

    def _advance(self, now_s: float) -> None:
        if now_s < self._now_s:
            raise ValueError(f"time went backwards: {now_s} < {self._now_s}")
        self._now_s = now_s

    def _by_urgency(self, now_s: float) -> list[_ModelState]:
        ready = [st for st in self._models.values() if st.active and (st.running or len(st.queue))]
        self._num_ready = len(ready)
        if len(ready) > 1:
            ready.sort(key=lambda st: self._urgency(st, now_s))
        return ready

    def _urgency(self, st: _ModelState, now_s: float) -> tuple[int, float]:
        """Sort key of the model-choice rule (module docstring): overdue, then online, then offline work; turns
        within each class."""
        cfg = self.config
        due, online = math.inf, False
        head = st.queue.peek()
        if head is not None:
            ttft = head.ttft_deadline_s - head.arrival_s
            if ttft < math.inf:
                online, due = True, head.arrival_s + cfg.urgency_fraction * ttft
            else:
                due = st.last_run_s + cfg.offline_period_s
        if st.running:
            tpot = st.min_tpot_s
            if tpot is None:
                tpot = st.min_tpot_s = min(s.tpot_target_s for s in st.running)
            if tpot < math.inf:
                online = True
                running_due = st.last_run_s + cfg.urgency_fraction * tpot
            else:
                running_due = st.last_run_s + cfg.offline_period_s
            due = min(due, running_due)
        return (0 if due <= now_s else 1 if online else 2, st.last_run_s)

    def _build(self, st: _ModelState) -> Batch:
        self._step += 1
        batch = self._building = Batch(st.name, self._step)
        self._schedule_running(st, batch, self.config.max_num_batched_tokens)
        self._admit(st, batch)
        self._building = None
        if not batch.has_compute:  # copies ordered while trying still have to happen
            self._pending_out.extend(batch.swap_out)
            batch.swap_out.clear()
        bs = st.layout.block_size_tokens
        for seq in batch.decodes:
            if seq.checkpointing:
                c = seq.num_computed_tokens
                batch.checkpoint.append(KVTransfer(seq.seq_id, st.name, (seq.block_table[c // bs],), c, 1))
        for seq, start, n in batch.prefills:
            if seq.checkpointing:
                batch.checkpoint.append(self._transfer(seq, start, n))
        return batch

    def _schedule_running(self, st: _ModelState, batch: Batch, budget: int) -> None:
        bs = st.layout.block_size_tokens
        step = batch.step
        cap = self.config.chunk_cap
        decodes = batch.decodes
        for seq in list(st.running):
            if seq.status is not RUNNING:  # preempted earlier in this step
                continue
            computed = seq.num_computed_tokens
            n = seq.prompt_tokens + seq.num_generated - computed
            if n == 1 and seq.num_generated:
                if budget < 1:
                    break
                if computed + 1 > len(seq.block_table) * bs and not self._grow(st, seq, computed + 1):
                    continue
                decodes.append(seq)
                batch.kv_tokens += computed + 1
                budget -= 1
            else:
                n = min(n, budget, cap)
                if n < 1:
                    break
                if not self._grow(st, seq, computed + n):
                    continue
                self._add_chunk(batch, seq, computed, n)
                budget -= n
            seq.scheduled_step = step

    def _admit(self, st: _ModelState, batch: Batch) -> None:
        queue, pool, cfg = st.queue, self.pool, self.config
        watermark = int(pool.num_pages * cfg.watermark_fraction)
        while True:
            # Recomputed each time: preempting a sequence scheduled in this batch gives its tokens back.
            budget = cfg.max_num_batched_tokens - batch.prefill_tokens - len(batch.decodes)
            seq = queue.peek()
            if seq is None or budget < 1:
                break
            if seq is None:
                break
            if self._exceeds_capacity(st, seq):
                self._drop(seq, DROP_EXCEEDS_KV)
                continue
            if len(st.running) >= cfg.max_num_seqs and not self._make_room(st, seq, seat=True):
                break
            resumed = seq.status is SeqStatus.SWAPPED or seq.status is SeqStatus.PAUSED_OFFLINE
            computed = seq.num_computed_tokens
            n = seq.num_tokens - computed
            n = 1 if n == 1 and seq.num_generated else min(n, budget, cfg.chunk_cap)
            if not self._allocate(st, seq, computed + n, seq.num_tokens, watermark):
                break
            queue.discard(seq)  # not pop(): making room may have queued a victim ahead of it
            if resumed:
                batch.swap_in.append(self._transfer(seq, 0, computed))
                if seq.status is SeqStatus.SWAPPED:
                    pool.drop_host(seq.seq_id)
            seq.status = RUNNING
            st.running.append(seq)
            st.min_tpot_s = None
            if n == 1 and seq.num_generated:
                batch.decodes.append(seq)
                batch.kv_tokens += computed + 1
            else:
                self._add_chunk(batch, seq, computed, n)
            seq.scheduled_step = batch.step

    def _allocate(self, st: _ModelState, seq: Sequence, num_tokens: int, whole_tokens: int, watermark: int) -> bool:
        """Blocks for `num_tokens` of a queued sequence, admitted only while all `whole_tokens` would fit now (so a
        chunked prefill is not started to be preempted half way); may preempt strictly lower-priority work."""
        pool = self.pool
        while not (pool.can_allocate(st.name, pool.num_new_blocks(st.name, seq.seq_id, whole_tokens),
                                     reserve_pages=watermark)
                   and pool.allocate(st.name, seq.seq_id, num_tokens, reserve_pages=watermark)):
            if not self._make_room(st, seq, seat=False):
                return False
        seq.block_table = self.pool.block_table(seq.seq_id)
        return True

    def _make_room(self, st: _ModelState, seq: Sequence, *, seat: bool) -> bool:
        """For queued `seq`, preempt the worst running sequence if it has strictly lower priority and the queue
        policy is `priority` or it is offline work yielding to online (a seat: same model only)."""
        candidates = st.running if seat or self._limit_binds(st) else self._all_running()
        victim = max(candidates, key=Sequence.victim_key, default=None)
        if victim is None or victim.priority <= seq.priority:
            return False
        if st.queue.policy != "priority" and (victim.online or not seq.online):
            return False  # other policies keep their order; only offline work always yields to online
        self._preempt(victim)
        return True

    def _grow(self, st: _ModelState, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for a running sequence; preempt the worst running sequence (maybe `seq`) until they fit."""
        pool = self.pool
        while not pool.allocate(st.name, seq.seq_id, num_tokens):
            same_model = self._limit_binds(st)
            candidates = st.running if same_model else self._all_running()
            victim = max(candidates, key=Sequence.victim_key)
            if victim is seq:
                if len(candidates) == 1:
                    self._drop(seq, DROP_EXCEEDS_KV)  # alone and still too large: it can never fit
                else:
                    self._preempt(seq)
                return False
            self._preempt(victim)
        seq.block_table = pool.block_table(seq.seq_id)
        return True

    def _limit_binds(self, st: _ModelState) -> bool:
        limit = self.pool.limit_pages(st.name)
        return limit is not None and self.pool.pages_used(st.name) >= limit

    def _all_running(self) -> list[Sequence]:
        return [s for m in self._models.values() for s in m.running]

    def _exceeds_capacity(self, st: _ModelState, seq: Sequence) -> bool:
        """Even alone, the sequence's tokens could not fit the model's share of the pool."""
        pages = self.pool.num_pages
        limit = self.pool.limit_pages(st.name)
        if limit is not None:
            pages = min(pages, limit)
        per_page = self.pool.blocks_per_page(st.name) * st.layout.block_size_tokens
        return seq.num_tokens > pages * per_page

    @staticmethod
    def _add_chunk(batch: Batch, seq: Sequence, start: int, n: int) -> None:
        batch.prefills.append(PrefillChunk(seq, start, n))
        batch.prefill_tokens += n
        batch.prefill_attn += n * start + n * (n + 1) / 2

    def _transfer(self, seq: Sequence, first_token: int, num_tokens: int) -> KVTransfer:
        bs = self._models[seq.model].layout.block_size_tokens
        table = self.pool.block_table(seq.seq_id)
        first_block = first_token // bs
        last_block = -(-(first_token + num_tokens) // bs)
        return KVTransfer(seq.seq_id, seq.model, tuple(table[first_block:last_block]), first_token, num_tokens)

    # -- preemption --------------------------------------------------------------------------------------------
    def _preempt(self, seq: Sequence, mode: PreemptMode | None = None, *, hold: bool = False) -> SeqStatus:
        """Take a running sequence off the device: pause (checkpointed), swap out or drop its KV for recompute."""
        st = self._models[seq.model]
        self._stop_running(st, seq)
        self.num_preemptions += 1
        seq.num_preemptions += 1
        status = self._release_kv(st, seq, mode)
        seq.status = status
        seq.held = hold
        if hold:
            st.held[seq.seq_id] = seq
        else:
            st.queue.push(seq)
        return status

    def _release_kv(self, st: _ModelState, seq: Sequence, mode: PreemptMode | None) -> SeqStatus:
        pool, computed = self.pool, seq.num_computed_tokens
        if seq.checkpointing and pool.host_tokens(seq.seq_id) >= computed:
            pool.free(seq.seq_id)
            seq.block_table = []
            return SeqStatus.PAUSED_OFFLINE
        if mode is None:
            mode = self.config.preempt_mode
        if mode is None:
            swap = st.costs is not None and st.costs.prefer_swap(computed)
            mode = PreemptMode.SWAP if swap else PreemptMode.RECOMPUTE
        if mode is PreemptMode.SWAP and computed and pool.store_host(seq.model, seq.seq_id, computed):
            transfer = self._transfer(seq, 0, computed)
            (self._building.swap_out if self._building is not None else self._pending_out).append(transfer)
            pool.free(seq.seq_id)
            seq.block_table = []
            return SeqStatus.SWAPPED
        pool.free(seq.seq_id)
        pool.drop_host(seq.seq_id)
        seq.block_table = []
        seq.checkpointing = not seq.online and pool.host_capacity_bytes > 0  # restarts from zero tokens
        seq.num_recomputed_tokens += computed
        seq.num_computed_tokens = 0
        return SeqStatus.PREEMPTED if seq.num_generated or computed else SeqStatus.WAITING

    def _drop(self, seq: Sequence, reason: str) -> None:
        self._detach(seq)
        seq.status = SeqStatus.DROPPED
        seq.drop_reason = reason
        self._dropped.append(seq)

    def _detach(self, seq: Sequence) -> None:
        """Take a live sequence out of its queues and free its device and host KV (progress stays on the object)."""
        st = self._models[seq.model]
        if seq.status is RUNNING:
            self._stop_running(st, seq)
        st.queue.discard(seq)
        st.held.pop(seq.seq_id, None)
        self.pool.free(seq.seq_id)
        self.pool.drop_host(seq.seq_id)
        seq.block_table = []
        seq.scheduled_step = -1  # a batch in flight no longer advances it
        self._seqs.pop(seq.seq_id, None)

    def _stop_running(self, st: _ModelState, seq: Sequence) -> None:
        if self._building is not None and seq.scheduled_step == self._building.step:
            self._building.unschedule(seq)
        st.running.remove(seq)
        st.min_tpot_s = None

    # -- actions -----------------------------------------------------------------------------------------------
    def set_queue_order(self, model: str, policy: QueuePolicy, group_ids: Iterable[str] = ()) -> None:
        """Reorder a model's queue (core.actions.SetQueueOrder)."""
        self._state(model).queue.set_policy(policy, group_ids)

    def queue_policy(self, model: str) -> tuple[QueuePolicy, tuple[str, ...]]:
        queue = self._state(model).queue
        return queue.policy, queue.group_order

    def preempt(self, seq_ids: Iterable[int], mode: PreemptMode | None = None, *, hold: bool = False) -> list[int]:
        """Preempt running sequences (core.actions.EvictRequests); others are skipped. Returns those preempted."""
        out = []
        for seq in self._running_in(seq_ids):
            self._preempt(seq, mode, hold=hold)
            out.append(seq.seq_id)
        return out

    def swap_out(self, seq_ids: Iterable[int]) -> list[int]:
        """Copy running sequences' KV to host and hold them there until `swap_in` (core.actions.SwapOutKV).
        Sequences host memory cannot take are left running. Returns those swapped out."""
        out = []
        for seq in self._running_in(seq_ids):
            if (self.pool.can_store_host(seq.model, seq.seq_id, seq.num_computed_tokens)
                    and self._preempt(seq, PreemptMode.SWAP, hold=True) is not SeqStatus.PREEMPTED):
                out.append(seq.seq_id)
        return out

    def swap_in(self, seq_ids: Iterable[int]) -> list[int]:
        """Release sequences held by `swap_out` (or `preempt(hold=True)`) to be copied back as room allows."""
        return self._release_held(seq_ids, lambda s: True)

    def pause_offline(self, seq_ids: Iterable[int] = (), free_kv_tokens: int | None = None) -> list[int]:
        """Pause offline sequences until `resume_offline` (core.actions.PreemptOffline): running ones (all when
        `seq_ids` is empty; only until `free_kv_tokens` KV tokens are free when given, worst priority first), and
        with no token target also the queued ones. Returns the ids paused."""
        ids = set(seq_ids)
        pick = (lambda s: not s.online and (not ids or s.seq_id in ids))
        running = sorted((s for s in self._all_running() if pick(s)), key=Sequence.victim_key, reverse=True)
        out: list[int] = []
        freed = 0
        for seq in running:
            if free_kv_tokens is not None and freed >= free_kv_tokens:
                break
            freed += seq.num_computed_tokens
            self._preempt(seq, hold=True)
            out.append(seq.seq_id)
        if free_kv_tokens is None:
            for st in self._models.values():
                for seq in [s for s in st.queue if pick(s)]:
                    st.queue.discard(seq)
                    seq.held = True
                    st.held[seq.seq_id] = seq
                    out.append(seq.seq_id)
        return out

    def resume_offline(self, seq_ids: Iterable[int] = ()) -> list[int]:
        """Requeue held offline sequences (all when `seq_ids` is empty) (core.actions.ResumeOffline)."""
        ids = set(seq_ids)
        return self._release_held(ids or None, lambda s: not s.online)

    def _release_held(self, seq_ids: Iterable[int] | None, pick) -> list[int]:
        out = []
        wanted = None if seq_ids is None else set(seq_ids)
        for st in self._models.values():
            for seq in sorted(st.held.values(), key=lambda s: s.seq_id):
                if (wanted is None or seq.seq_id in wanted) and pick(seq):
                    del st.held[seq.seq_id]
                    seq.held = False
                    st.queue.push(seq)
                    out.append(seq.seq_id)
        return out

    def remove(self, seq_ids: Iterable[int]) -> list[Sequence]:
        """Take sequences off this device (to migrate or re-route them): device KV freed, host copies dropped,
        progress kept on the object (`num_computed_tokens`) for the receiver. Unknown ids are skipped."""
        seqs = [self._seqs[i] for i in seq_ids if i in self._seqs]
        for seq in seqs:
            self._detach(seq)
        return seqs

    def drop(self, seq_ids: Iterable[int], reason: str) -> list[Sequence]:
        """Give up on sequences (status DROPPED with `reason`); they are also returned by `take_dropped`."""
        seqs = [self._seqs[i] for i in seq_ids if i in self._seqs]
        for seq in seqs:
            self._drop(seq, reason)
        return seqs

    def _running_in(self, seq_ids: Iterable[int]) -> list[Sequence]:
        seqs = (self._seqs.get(i) for i in seq_ids)
        return [s for s in seqs if s is not None and s.status is RUNNING]

    # -- helpers -----------------------------------------------------------------------------------------------
    def _state(self, model: str) -> _ModelState:
        try:
            return self._models[model]
        except KeyError:
            raise InputError("model", model, f"a model resident on this device: {', '.join(self._models) or 'none'}") from None

    def _states(self, model: str | None) -> Iterable[_ModelState]:
        return self._models.values() if model is None else (self._state(model),)

    def check_invariants(self) -> None:
        """Raise AssertionError if scheduler and pool disagree (tests and simulations call this)."""
        self.pool.check_invariants()
        for st in self._models.values():
            for seq in st.running:
                assert seq.status is RUNNING and seq.seq_id in self._seqs
                assert len(self.pool.block_table(seq.seq_id)) * st.layout.block_size_tokens >= seq.num_computed_tokens
            for seq in st.queue:
                assert seq.status in PENDING_STATUSES and not seq.held, (seq.seq_id, seq.status)
            for seq in st.held.values():
                assert seq.held and seq.status in PENDING_STATUSES
        queued = sum(len(st.queue) + len(st.running) + len(st.held) for st in self._models.values())
        assert queued == len(self._seqs), f"{queued} sequences in queues, {len(self._seqs)} live"
