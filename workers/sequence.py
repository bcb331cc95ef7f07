"""The scheduler's vocabulary: a request as the engine sees it (`Sequence`), the queue it waits in (`WaitQueue`),
the message to the executor (`Batch`, with its `PrefillChunk`s and `KVTransfer`s), and the scheduler's settings
(`SchedulerConfig`, `PreemptionCosts`). `workers.scheduler` re-exports them all.

Token accounting (vLLM v1 style): a sequence has `num_tokens = prompt_tokens + num_generated` tokens, of which
`num_computed_tokens` have KV on the device. Each iteration computes KV for some of the rest (a prefill chunk, or one
token when decoding) and, once it has caught up to the last token, samples the next one. A sequence preempted by
recompute starts again from zero computed tokens (prompt and generated tokens are prefilled together); one swapped
out or paused with a host checkpoint keeps its computed tokens and only copies them back.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, NamedTuple

from core.actions import PreemptMode
from core.errors import InputError
from core.fleet import SLOClass
from core.requests import Request


class SeqStatus(StrEnum):
    """Where a sequence is in its life."""

    WAITING = "waiting"  # queued, never run (or its model is not active yet)
    RUNNING = "running"  # holds device KV and is scheduled each iteration
    PREEMPTED = "preempted"  # KV dropped; queued to be recomputed
    SWAPPED = "swapped"  # KV in host memory; queued to be copied back
    PAUSED_OFFLINE = "paused_offline"  # offline request paused; its KV checkpoint is in host memory
    FINISHED = "finished"
    DROPPED = "dropped"  # given up; `drop_reason` says why


# Statuses of sequences that wait for the scheduler to (re)admit them.
PENDING_STATUSES = frozenset({SeqStatus.WAITING, SeqStatus.PREEMPTED, SeqStatus.SWAPPED, SeqStatus.PAUSED_OFFLINE})
DONE_STATUSES = frozenset({SeqStatus.FINISHED, SeqStatus.DROPPED})


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside a device's scheduler. Identity is the object (`seq_id` is unique per device)."""

    seq_id: int
    model: str
    prompt_tokens: int
    max_output_tokens: int  # output budget; the simulator's true length, the engine's max_tokens
    arrival_s: float
    slo_class: str = ""
    priority: int = 0  # 0 is the most important (SLOClass.priority)
    online: bool = True  # offline sequences checkpoint their KV to host and yield to online work
    ttft_deadline_s: float = math.inf  # arrival + TTFT target (inf: offline or no target)
    tpot_target_s: float = math.inf  # TPOT target (inf: offline or no target)
    group_id: str = ""  # RequestGroup id (model, SLO class, arrival window) for explicit queue orders
    prompt_token_ids: tuple[int, ...] | None = None  # the engine's input; None in the simulator
    output_token_ids: list[int] = field(default_factory=list)  # filled by the engine; empty in the simulator
    status: SeqStatus = SeqStatus.WAITING
    num_generated: int = 0
    num_computed_tokens: int = 0  # tokens whose KV is on the device
    block_table: list[int] = field(default_factory=list)  # the pool's live table while on the device
    first_token_s: float | None = None
    finish_s: float | None = None
    drop_reason: str | None = None
    held: bool = False  # paused or swapped out by an action: stays out until resumed or swapped in
    checkpointing: bool = False  # offline: each step's new KV is copied to host memory
    num_preemptions: int = 0
    num_recomputed_tokens: int = 0  # KV tokens computed again after recompute preemptions
    scheduled_step: int = -1  # last scheduler step that included this sequence
    queue_gen: int = 0  # bumps on each (re)queue; stale heap entries are skipped
    intake_s: float = 0.0  # simulator: client-side intake charged to the request (LatencyModel.admit_s, idle engine)

    @classmethod
    def from_request(cls, request: Request, slo: SLOClass | None = None, *, group_id: str = "",
                     seq_id: int | None = None) -> Sequence:
        """A sequence for `request` under SLO class `slo` (None: online, priority 0, no targets)."""
        online = slo.online if slo is not None else True
        ttft = slo.ttft_s if slo is not None and slo.ttft_s is not None else math.inf
        tpot = slo.tpot_s if slo is not None and slo.tpot_s is not None else math.inf
        return cls(
            seq_id=request.request_id if seq_id is None else seq_id,
            model=request.model,
            prompt_tokens=request.prompt_tokens,
            max_output_tokens=request.output_tokens,
            arrival_s=request.arrival_s,
            slo_class=request.slo_class,
            priority=slo.priority if slo is not None else 0,
            online=online,
            ttft_deadline_s=request.arrival_s + ttft if online else math.inf,
            tpot_target_s=tpot if online else math.inf,
            group_id=group_id,
            prompt_token_ids=request.prompt_token_ids,
        )

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return self.prompt_tokens + self.num_generated

    @property
    def is_decoding(self) -> bool:
        """Caught up: the next iteration computes one token's KV and samples the next token."""
        return self.num_generated > 0 and self.num_computed_tokens == self.num_tokens - 1

    @property
    def is_done(self) -> bool:
        return self.status in DONE_STATUSES

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (0 for one-token outputs); None until finished."""
        if self.finish_s is None or self.first_token_s is None:
            return None
        return (self.finish_s - self.first_token_s) / (self.num_generated - 1) if self.num_generated > 1 else 0.0

    def victim_key(self) -> tuple[int, float, int]:
        """Larger is preempted first: lowest priority, then latest arrival (least work lost)."""
        return (self.priority, self.arrival_s, self.seq_id)


QueuePolicy = Literal["fcfs", "priority", "edf", "explicit"]
QUEUE_POLICIES: tuple[str, ...] = ("fcfs", "priority", "edf", "explicit")


class PrefillChunk(NamedTuple):
    """Prompt (or recompute) tokens [start, start + num_tokens) of one sequence computed in this iteration."""

    seq: Sequence
    start: int  # tokens already computed (the chunk's context offset)
    num_tokens: int


class KVTransfer(NamedTuple):
    """A KV copy between device and host for one sequence."""

    seq_id: int
    model: str
    block_ids: tuple[int, ...]  # device blocks holding the tokens (swap out: blocks already freed in the pool)
    first_token: int  # first token copied (0 for swaps; the step's first new token for checkpoints)
    num_tokens: int


@dataclass(slots=True, eq=False)
class Batch:
    """One iteration's work: one model's prefill chunks and decodes, plus KV copies. Read-only once returned.

    The first four counters are exactly the features of `core.latency.LatencyModel.iteration_s`.
    """

    model: str  # the model whose forward pass runs ("" for a copy-only batch)
    step: int  # scheduler step number (sequences record the last step that included them)
    prefills: list[PrefillChunk] = field(default_factory=list)  # chunks in scheduling order
    decodes: list[Sequence] = field(default_factory=list)  # sequences computing one token and sampling the next
    prefill_tokens: int = 0  # Σ chunk tokens
    prefill_attn: float = 0.0  # Σ over chunk tokens of the context they attend to (causal: start + i + 1)
    kv_tokens: int = 0  # Σ context read by decodes (computed tokens + the new one)
    swap_out: list[KVTransfer] = field(default_factory=list)  # device → host before the forward pass
    swap_in: list[KVTransfer] = field(default_factory=list)  # host → device before the forward pass
    checkpoint: list[KVTransfer] = field(default_factory=list)  # offline KV, device → host after the forward pass
    num_steps: int = 1  # decode iterations this batch stands for (>1 only from Scheduler.plan_run; see there)

    @property
    def decode_seqs(self) -> int:
        return len(self.decodes)

    @property
    def num_seqs(self) -> int:
        return len(self.decodes) + len(self.prefills)

    @property
    def has_compute(self) -> bool:
        return bool(self.decodes or self.prefills)

    @property
    def swap_tokens(self) -> int:
        """Tokens copied before the forward pass (both directions)."""
        return sum(t.num_tokens for t in self.swap_out) + sum(t.num_tokens for t in self.swap_in)

    def unschedule(self, seq: Sequence) -> None:
        """Take a sequence preempted while this batch is being built back out of it."""
        if seq in self.decodes:
            self.decodes.remove(seq)
            self.kv_tokens -= seq.num_computed_tokens + 1
            return
        for i, chunk in enumerate(self.prefills):
            if chunk.seq is seq:
                del self.prefills[i]
                n, start = chunk.num_tokens, chunk.start
                self.prefill_tokens -= n
                self.prefill_attn -= n * start + n * (n + 1) / 2
                return


class WaitQueue:
    """A model's queued sequences in policy order: a heap with lazy deletion (stale entries are skipped)."""

    def __init__(self, policy: QueuePolicy = "fcfs", group_ids: Iterable[str] = ()) -> None:
        self._members: dict[int, Sequence] = {}
        self._heap: list[tuple[float, float, int, int, Sequence]] = []
        self._online: list[tuple[float, float, int, int, Sequence]] = []  # the online members, same order
        self.set_policy(policy, group_ids)

    def set_policy(self, policy: QueuePolicy, group_ids: Iterable[str] = ()) -> None:
        if policy not in QUEUE_POLICIES:
            raise InputError("policy", policy, f"one of {', '.join(QUEUE_POLICIES)}")
        self.policy: QueuePolicy = policy
        self.group_order: tuple[str, ...] = tuple(group_ids)
        self._rank = {g: i for i, g in enumerate(self.group_order)}
        members = list(self._members.values())
        self._members.clear()
        self._heap.clear()
        self._online.clear()
        for seq in members:
            self.push(seq)

    def _key(self, seq: Sequence) -> float:
        if self.policy == "fcfs":
            return 0.0
        if self.policy == "priority":
            return float(seq.priority)
        if self.policy == "edf":
            return seq.ttft_deadline_s
        return float(self._rank.get(seq.group_id, len(self._rank)))

    def push(self, seq: Sequence) -> None:
        seq.queue_gen += 1
        self._members[seq.seq_id] = seq
        entry = (self._key(seq), seq.arrival_s, seq.seq_id, seq.queue_gen, seq)
        heapq.heappush(self._heap, entry)
        if seq.online:
            online = self._online
            heapq.heappush(online, entry)
            if len(online) > 2 * len(self._members) + 64:  # stale entries of a heap nobody peeks: drop them
                online[:] = [e for e in online if e[3] == e[4].queue_gen and e[4].seq_id in self._members]
                heapq.heapify(online)

    def discard(self, seq: Sequence) -> None:
        if self._members.pop(seq.seq_id, None) is not None:
            seq.queue_gen += 1

    def peek(self) -> Sequence | None:
        return self._head(self._heap)

    def peek_online(self) -> Sequence | None:
        """The first online member in policy order (offline work queued ahead of it may be waiting for room)."""
        return self._head(self._online)

    def _head(self, heap: list[tuple[float, float, int, int, Sequence]]) -> Sequence | None:
        while heap:
            entry = heap[0]
            seq = entry[4]
            if entry[3] == seq.queue_gen and seq.seq_id in self._members:
                return seq
            heapq.heappop(heap)
        return None

    def pop(self) -> Sequence:
        seq = self.peek()
        assert seq is not None, "pop from an empty WaitQueue"
        heapq.heappop(self._heap)
        del self._members[seq.seq_id]
        seq.queue_gen += 1
        return seq

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, seq: Sequence) -> bool:
        return seq.seq_id in self._members

    def __iter__(self) -> Iterator[Sequence]:
        """Members in no particular order."""
        return iter(list(self._members.values()))


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Limits of one device's scheduler. Never mutated after construction."""

    max_num_batched_tokens: int = 8192  # token budget per iteration (vLLM's max_num_batched_tokens)
    max_num_seqs: int = 256  # sequences per iteration (one model's batch)
    max_prefill_chunk_tokens: int | None = None  # one sequence's prefill chunk cap (None: the token budget)
    watermark_fraction: float = 0.01  # pool pages kept free when admitting new sequences, against thrashing
    preempt_mode: PreemptMode | None = None  # force a mode; None: swap iff cheaper (PreemptionCosts)
    urgency_fraction: float = 0.5  # share of the TTFT / TPOT targets by which work is due (model choice)
    offline_period_s: float = 1.0  # offline-only work runs at least this often
    # Offline work in a model's batches keeps its steady decode iteration within this share of the tightest online
    # TPOT target (workers.harvest; needs the model's latency model). None: only KV and the token budget limit it.
    harvest_fraction: float | None = 0.5

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise InputError(name, getattr(self, name), "an integer ≥ 1")
        if self.max_prefill_chunk_tokens is not None and self.max_prefill_chunk_tokens < 1:
            raise InputError("max_prefill_chunk_tokens", self.max_prefill_chunk_tokens, "an integer ≥ 1, or None")
        if not 0 <= self.watermark_fraction < 1:
            raise InputError("watermark_fraction", self.watermark_fraction, "a fraction in [0, 1)")
        if not 0 < self.urgency_fraction <= 1:
            raise InputError("urgency_fraction", self.urgency_fraction, "a fraction in (0, 1]")
        if self.offline_period_s <= 0:
            raise InputError("offline_period_s", self.offline_period_s, "seconds > 0")
        if self.harvest_fraction is not None and not 0 < self.harvest_fraction <= 1:
            raise InputError("harvest_fraction", self.harvest_fraction, "a fraction in (0, 1], or None")

    @property
    def chunk_cap(self) -> int:
        return self.max_prefill_chunk_tokens or self.max_num_batched_tokens


@dataclass(frozen=True, slots=True)
class PreemptionCosts:
    """What preempting a sequence of a model costs, to choose swap or recompute (from its LatencyModel)."""

    swap_s_per_token: float  # copying one token's KV between device and host, one direction
    recompute_s_per_token: float  # prefill GEMM time per token (LatencyModel.c_prefill_s)
    recompute_attn_s: float  # prefill attention per (token × context token) (LatencyModel.c_attn_s)

    def prefer_swap(self, num_tokens: int) -> bool:
        """Swap iff copying the KV out and back in takes less time than prefilling it again."""
        swap = 2 * self.swap_s_per_token * num_tokens
        recompute = self.recompute_s_per_token * num_tokens + self.recompute_attn_s * num_tokens * (num_tokens + 1) / 2
        return swap < recompute
