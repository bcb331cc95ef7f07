"""Actions on a device's queues (core.actions): reorder, preempt, swap out and in, pause and resume offline work,
remove (to migrate or re-route) and drop. Copies they need ride on the next batch.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.actions import PreemptMode
from workers.preemption import Preemption
from workers.scheduler_base import RUNNING
from workers.sequence import QueuePolicy, SeqStatus, Sequence


class QueueActions(Preemption):
    """Mixin of `Scheduler`: the queue actions (see the module docstring)."""

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
