"""Preemption: who gives up KV when a sequence cannot grow or a queued one cannot be seated, and how.

When a running sequence cannot grow, the lowest-priority, latest-arrived running sequence (of the same model if its
page limit binds or a mirror of a TP model is full — only its own blocks free pages there —, of any model on the
device if the pool is full) is preempted — possibly the sequence itself, which is dropped only when nothing else
could ever make room (alone under its limit, or alone on a device holding no other device's TP pages). A
queued sequence may displace running work only of strictly lower priority: under the `priority` queue policy any
such sequence (vLLM's priority scheduling), under the others only offline work when it is online (ConServe).

Offline sequences checkpoint each step's new KV to host (ConServe), so preempting them is free and resuming
recomputes nothing. Others are swapped to host when copying out and back is cheaper than recomputing
(`PreemptionCosts.prefer_swap`) and host memory has room, else their KV is dropped and recomputed later.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

from core.actions import PreemptMode
from workers.scheduler_base import DROP_EXCEEDS_KV, RUNNING, ModelState, SchedulerBase
from workers.sequence import SeqStatus, Sequence


class Preemption(SchedulerBase):
    """Mixin of `Scheduler`: making room for a sequence and taking sequences off the device."""

    def _make_room(self, st: ModelState, seq: Sequence, *, same_model: bool) -> bool:
        """For queued `seq`, preempt the worst running sequence (of its model only when `same_model`: a seat, or
        pages only its model can free) if it has strictly lower priority and the queue policy is `priority` or it is
        offline work yielding to online."""
        candidates = st.running if same_model else self._all_running()
        victim = max(candidates, key=Sequence.victim_key, default=None)
        if victim is None or victim.priority <= seq.priority:
            return False
        if st.queue.policy != "priority" and (victim.online or not seq.online):
            return False  # other policies keep their order; only offline work always yields to online
        self._preempt(victim)
        return True

    def _grow(self, st: ModelState, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for a running sequence; preempt the worst running sequence (maybe `seq`) until they fit."""
        pool = self.pool
        while not pool.allocate(st.name, seq.seq_id, num_tokens):
            limited = self._limit_binds(st)
            mirrors_short = not limited and pool.mirrors_short(st.name)
            candidates = st.running if limited or mirrors_short else self._all_running()
            victim = max(candidates, key=Sequence.victim_key)
            if victim is seq:
                if len(candidates) == 1 and (limited or not (mirrors_short or pool.num_mirrored_pages)):
                    self._drop(seq, DROP_EXCEEDS_KV)  # alone and still too large: it can never fit
                else:
                    self._preempt(seq)
                return False
            self._preempt(victim)
        seq.block_table = pool.block_table(seq.seq_id)
        return True

    def _exceeds_capacity(self, st: ModelState, seq: Sequence) -> bool:
        """Even alone, the sequence's tokens could not fit the model's share of the pool (and of its mirrors)."""
        return seq.num_tokens > self.kv_capacity_tokens(st.name)

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

    def _release_kv(self, st: ModelState, seq: Sequence, mode: PreemptMode | None) -> SeqStatus:
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

    def _stop_running(self, st: ModelState, seq: Sequence) -> None:
        if self._building is not None and seq.scheduled_step == self._building.step:
            self._building.unschedule(seq)
        st.running.remove(seq)
        st.min_tpot_s = None
