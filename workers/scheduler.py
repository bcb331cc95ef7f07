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
   change the next iteration, and `plan_rotation(batch, start_s, timing, max_steps)` plays several models' decode
   turns ahead (the simulator's one event per run; see workers.decode_runs and workers.rotations).

One object, one concept; its parts live in modules of their own, each documenting its rule:
- `workers.model_choice` — which model runs next (due times, overdue first, turns);
- `workers.batching` — one model's batch (running first, then admission in queue-policy order);
- `workers.preemption` — victims and how they give up KV (pause, swap, recompute);
- `workers.harvest` — offline work sized by the time online TPOT targets leave (ConServe);
- `workers.decode_runs`, `workers.rotations` — runs of decode batches (one model repeating; models taking turns);
- `workers.queue_actions` — the actions above;
- `workers.scheduler_base` — the state they share.
The messages and settings live in `workers.sequence` (re-exported here).

Pure Python (no torch): the simulator and the real engine run this same code.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from core.errors import InputError
from core.latency import LatencyModel
from workers.batching import BatchFormation
from workers.kv_pool import KVLayout, KVPool
from workers.model_choice import ModelChoice
from workers.queue_actions import QueueActions
from workers.rotations import Rotation, Rotations
from workers.scheduler_base import RUNNING, ModelState
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
    "QUEUE_POLICIES", "Batch", "KVTransfer", "PreemptionCosts", "PrefillChunk", "QueuePolicy", "Rotation",
    "Scheduler", "SchedulerConfig", "SeqStatus", "Sequence", "WaitQueue",
]


class Scheduler(QueueActions, BatchFormation, ModelChoice, Rotations):
    """Schedules the resident models of one device over one shared `KVPool` (see the module docstring)."""

    # -- models ------------------------------------------------------------------------------------------------
    def add_model(self, model: str, layout: KVLayout, *, limit_pages: int | None = None, revision: int = 0,
                  active: bool = True, policy: QueuePolicy = "fcfs",
                  preemption_costs: PreemptionCosts | None = None, mirrors: tuple[KVPool, ...] = (),
                  latency: LatencyModel | None = None) -> None:
        """Make a model resident: its KV joins the pool, its sequences may be queued. `active=False` queues them
        without running them (weights still loading). `mirrors`: the pools of the other devices of a TP group
        (see workers.kv_pool). `latency`: its iteration times here, which size its offline work
        (workers.harvest)."""
        if model in self._models:
            raise InputError("model", model, "a model not yet resident on this device")
        self.pool.add_model(model, layout, limit_pages=limit_pages, revision=revision, mirrors=mirrors)
        self._models[model] = ModelState(model, layout, WaitQueue(policy), preemption_costs, active,
                                         latency=latency)

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
