"""Runs of decodes: one decision standing for several identical decode iterations.

An executor that has nothing else to do between iterations (the simulator) may repeat a decode-only batch without
asking the scheduler again, with exactly the result of scheduling every iteration (vLLM's multi-step scheduling
does the same on a GPU). `plan_run` says how many times; whoever cuts a run short commits the steps done
(`on_batch_done(steps=…)`) and calls `prepare_step` for the step in flight. When several models take turns on the
device, the runs are rotations (workers.rotations).

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

from workers.scheduler_base import RUNNING, ModelState, SchedulerBase
from workers.sequence import Batch, Sequence


class DecodeRuns(SchedulerBase):
    """Mixin of `Scheduler`: planning and committing runs of repeated decode batches."""

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

    def _reserve_steps(self, st: ModelState, decodes: list[Sequence], steps: int) -> int:
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
        """KV blocks for `ahead` decode steps of the batch's sequences, taken in the order single iterations would
        take them (step by step, sequences in batch order): blocks of one model share pages, and which blocks
        share a page decides when pages free again."""
        pool, bs, step = self.pool, self._models[batch.model].layout.block_size_tokens, batch.step
        if ahead == 1:  # one step: batch order is that order
            for seq in batch.decodes:
                need = seq.num_computed_tokens + 1
                if seq.status is RUNNING and seq.scheduled_step == step and need > len(seq.block_table) * bs:
                    if not pool.allocate(seq.model, seq.seq_id, need):
                        raise RuntimeError("KV checked by plan_run was taken during the run")
                    seq.block_table = pool.block_table(seq.seq_id)
            return
        needs: list[tuple[int, int, Sequence]] = []  # (step that needs the block, position, sequence)
        for pos, seq in enumerate(batch.decodes):
            held = len(seq.block_table) * bs
            computed = seq.num_computed_tokens
            if seq.status is RUNNING and seq.scheduled_step == step and computed + ahead > held:
                if ahead <= bs:  # one block at most
                    needs.append((held - computed, pos, seq))
                else:
                    needs.extend((s, pos, seq) for s in range(held - computed, ahead, bs))
        if len(needs) > 1:
            needs.sort(key=lambda need: need[:2])
        for s, _, seq in needs:
            if not pool.allocate(seq.model, seq.seq_id, seq.num_computed_tokens + s + 1):
                raise RuntimeError("KV checked by plan_run was taken during the run")
            seq.block_table = pool.block_table(seq.seq_id)
