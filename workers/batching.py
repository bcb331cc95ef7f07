"""Batch formation: one model's batch for the next iteration (vLLM v1 style).

Running sequences first, in admission order (a decode is one token, an unfinished prefill continues in chunks), then
queued sequences in the queue policy's order (`fcfs`, `priority`, `edf` by TTFT deadline, `explicit` group order;
see core.actions.SetQueueOrder) while the token budget (`max_num_batched_tokens`), `max_num_seqs` and KV pages allow.
A queued sequence that does not fit stops admission (no overtaking), unless a running sequence of strictly lower
priority can be preempted for it (workers.preemption). A chunked prefill is admitted only while the whole sequence
would fit now, so that it is not started to be preempted half way. Offline work is sized by the time the model's
online TPOT targets leave (workers.harvest): offline sequences that do not fit are passed over for online ones.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

import math

from workers.harvest import Harvest, HarvestGate
from workers.scheduler_base import DROP_EXCEEDS_KV, RUNNING, ModelState
from workers.sequence import Batch, KVTransfer, PrefillChunk, SeqStatus, Sequence


class BatchFormation(Harvest):
    """Mixin of `Scheduler`: building one model's batch."""

    def _build(self, st: ModelState) -> Batch:
        self._step += 1
        batch = self._building = Batch(st.name, self._step)
        gate = self._harvest_gate(st)
        self._schedule_running(st, batch, self.config.max_num_batched_tokens, gate)
        self._admit(st, batch, gate)
        self._building = None
        st.prefilled = bool(batch.prefills)
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

    def _schedule_running(self, st: ModelState, batch: Batch, budget: int, gate: HarvestGate | None) -> None:
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
                if gate is not None and not seq.online:
                    n = max(1, gate.chunk(batch, computed, n))
                if not self._grow(st, seq, computed + n):
                    continue
                self._add_chunk(batch, seq, computed, n)
                budget -= n
            seq.scheduled_step = step

    def _admit(self, st: ModelState, batch: Batch, gate: HarvestGate | None) -> None:
        queue, pool, cfg = st.queue, self.pool, self.config
        watermark = int(pool.num_pages * cfg.watermark_fraction)
        online_only = False  # the offline budget is spent: only online sequences may still be admitted
        while True:
            # Recomputed each time: preempting a sequence scheduled in this batch gives its tokens back.
            budget = cfg.max_num_batched_tokens - batch.prefill_tokens - len(batch.decodes)
            seq = queue.peek_online() if online_only else queue.peek()
            if seq is None or budget < 1:
                break
            if self._exceeds_capacity(st, seq):
                self._drop(seq, DROP_EXCEEDS_KV)
                continue
            computed = seq.num_computed_tokens
            n = seq.num_tokens - computed
            n = 1 if n == 1 and seq.num_generated else min(n, budget, cfg.chunk_cap)
            if gate is not None and not seq.online:
                if n > 1:
                    n = gate.chunk(batch, computed, n)
                if n < 1 or not gate.admits(seq):
                    online_only = True  # workers.harvest
                    continue
            if len(st.running) >= cfg.max_num_seqs and not self._make_room(st, seq, same_model=True):
                break
            resumed = seq.status is SeqStatus.SWAPPED or seq.status is SeqStatus.PAUSED_OFFLINE
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
            if gate is not None:
                gate.add(seq)
            elif seq.online and seq.tpot_target_s < math.inf:
                gate = self._harvest_gate(st)  # the first online work of this batch: it counts `seq` already
            if seq.online and gate is not None and self._yield_offline(st, gate):
                online_only = True

    def _allocate(self, st: ModelState, seq: Sequence, num_tokens: int, whole_tokens: int, watermark: int) -> bool:
        """Blocks for `num_tokens` of a queued sequence, admitted only while all `whole_tokens` would fit now (so a
        chunked prefill is not started to be preempted half way); may preempt strictly lower-priority work."""
        pool = self.pool
        while not (pool.can_allocate(st.name, need := pool.num_new_blocks(st.name, seq.seq_id, whole_tokens),
                                     reserve_pages=watermark)
                   and pool.allocate(st.name, seq.seq_id, num_tokens, reserve_pages=watermark)):
            own = self._limit_binds(st) or pool.mirrors_short(st.name, need, reserve_pages=watermark)
            if not self._make_room(st, seq, same_model=own):
                return False
        seq.block_table = self.pool.block_table(seq.seq_id)
        return True

    @staticmethod
    def _add_chunk(batch: Batch, seq: Sequence, start: int, n: int) -> None:
        batch.prefills.append(PrefillChunk(seq, start, n))
        batch.prefill_tokens += n
        batch.prefill_attn += n * start + n * (n + 1) / 2
