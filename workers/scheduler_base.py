"""The state every part of the `Scheduler` shares: per-model queues (`ModelState`) and the scheduler's own
bookkeeping (`SchedulerBase`). The parts — preemption (`workers.preemption`), batch formation
(`workers.batching`), the model-choice rule (`workers.model_choice`), runs of decodes (`workers.decode_runs`) and
queue actions (`workers.queue_actions`) — are mixins over this base, combined by `workers.scheduler.Scheduler`;
each module holds one concept, all of them one object's state.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.errors import InputError
from core.latency import LatencyModel
from workers.kv_pool import KVLayout, KVPool
from workers.sequence import (
    Batch,
    KVTransfer,
    PreemptionCosts,
    SchedulerConfig,
    SeqStatus,
    Sequence,
    WaitQueue,
)

RUNNING = SeqStatus.RUNNING
DROP_EXCEEDS_KV = "exceeds_kv_capacity"


@dataclass(slots=True, eq=False)
class ModelState:
    """One resident model's queues on the device, and what the model-choice rule reads."""

    name: str
    layout: KVLayout
    queue: WaitQueue
    costs: PreemptionCosts | None
    active: bool = True
    running: list[Sequence] = field(default_factory=list)  # in admission order
    held: dict[int, Sequence] = field(default_factory=dict)  # paused / swapped out by actions
    last_run_s: float = -math.inf
    min_tpot_s: float | None = None  # cache over running online sequences; None: recompute
    prefilled: bool = False  # its last batch had prefill chunks (running sequences may still be prefilling)
    latency: LatencyModel | None = None  # iteration times on this device (workers.harvest); None: not known

    @property
    def has_work(self) -> bool:
        return bool(self.running) or bool(len(self.queue))

    def online_tpot_s(self) -> float:
        """The tightest TPOT target of its running sequences (inf: none online), cached in `min_tpot_s`."""
        if self.min_tpot_s is None:
            self.min_tpot_s = min((s.tpot_target_s for s in self.running), default=math.inf)
        return self.min_tpot_s

    def steady_s(self) -> float:
        """Its steady iteration: every running sequence decoding at its current context (0 without a latency
        model)."""
        if self.latency is None:
            return 0.0
        return self.latency.iteration_s(decode_seqs=len(self.running), kv_tokens=self.context_tokens())

    def context_tokens(self) -> int:
        return sum(s.num_tokens for s in self.running)


class SchedulerBase:
    """A device's scheduling state over one shared `KVPool` (see workers.scheduler for the contract)."""

    def __init__(self, pool: KVPool, config: SchedulerConfig | None = None) -> None:
        self.pool = pool
        self.config = config or SchedulerConfig()
        self._models: dict[str, ModelState] = {}
        self._seqs: dict[int, Sequence] = {}  # every live sequence (not finished or dropped)
        self._step = 0
        self._now_s = -math.inf
        self._pending_out: list[KVTransfer] = []  # swap-outs ordered by actions, copied with the next batch
        self._dropped: list[Sequence] = []
        self._building: Batch | None = None
        self._num_ready = 0  # models with runnable work at the last schedule()
        self.num_preemptions = 0

    def kv_capacity_tokens(self, model: str) -> int:
        """The most tokens one sequence of the model could hold alone: its share of the pool (and of its mirrors)
        as the pool is sized now. A KV resize changes it."""
        st = self._state(model)
        return self.pool.max_pages(model) * self.pool.blocks_per_page(model) * st.layout.block_size_tokens

    def _transfer(self, seq: Sequence, first_token: int, num_tokens: int) -> KVTransfer:
        bs = self._models[seq.model].layout.block_size_tokens
        table = self.pool.block_table(seq.seq_id)
        first_block = first_token // bs
        last_block = -(-(first_token + num_tokens) // bs)
        return KVTransfer(seq.seq_id, seq.model, tuple(table[first_block:last_block]), first_token, num_tokens)

    def _all_running(self) -> list[Sequence]:
        return [s for m in self._models.values() for s in m.running]

    def _limit_binds(self, st: ModelState) -> bool:
        limit = self.pool.limit_pages(st.name)
        return limit is not None and self.pool.pages_used(st.name) >= limit

    # -- helpers -----------------------------------------------------------------------------------------------
    def _state(self, model: str) -> ModelState:
        try:
            return self._models[model]
        except KeyError:
            raise InputError("model", model, f"a model resident on this device: {', '.join(self._models) or 'none'}") from None

    def _states(self, model: str | None) -> Iterable[ModelState]:
        return self._models.values() if model is None else (self._state(model),)
