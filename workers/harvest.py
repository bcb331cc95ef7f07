"""Harvesting: offline work runs beside online work only within the time online TPOT targets leave (ConServe).

The engine runs a model's offline (batch) sequences in the same iterations as its online ones, so every running
offline sequence lengthens every decode step the online sequences wait on; admitting online work first is not
enough. With the model's latency model (`Scheduler.add_model(..., latency=...)`, core.latency) and
`SchedulerConfig.harvest_fraction`, batch formation sizes offline work by predicted iteration time. While the model
has online work with a TPOT target (running, or queued) — or another model on the device has running online work —
its *steady* iteration (every running sequence decoding at its current context, `LatencyModel.iteration_s`) is kept
within `harvest_fraction` × the tightest such target on the device, less the steady iterations of the other models
running there: models time-sharing a device decode in turns, so an online sequence's TPOT is a round of every
running model's iteration, and offline work in any of them lengthens it:

- an offline sequence is admitted only if the steady iteration with it stays within that budget and this
  iteration has time left for its first prefill chunk; online sequences queued behind it are still admitted;
- a running offline sequence's prefill chunk is cut to the time this iteration has left (at least one token, so
  it never holds KV without progress);
- an online sequence admitted past the budget pauses running offline sequences, latest first, until the steady
  iteration fits again or none is left. Offline KV is checkpointed to host each step (workers.preemption), so
  pausing costs no recompute.

The checks run only when a batch is built, and they change nothing a repeated decode batch would see (a run needs
an empty queue and no prefills; workers.decode_runs), so the executors' one-decision-per-run contract holds. Contexts
grow between admissions; the fraction's headroom absorbs that. An online arrival pauses offline work of its own
model only; the other models' offline work yields at their next admission. With no latency model, or no online TPOT
target on the device, offline work is limited by KV and the token budget alone, as before.

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.latency import LatencyModel
from workers.preemption import Preemption
from workers.scheduler_base import ModelState
from workers.sequence import Batch, Sequence


@dataclass(slots=True)
class HarvestGate:
    """One batch's offline budget: the steady iteration of a model's running sequences against the device's TPOT
    budget."""

    lm: LatencyModel
    budget_s: float  # harvest_fraction × the tightest online TPOT target on the device, less `others_s`
    fraction: float
    others_s: float  # the steady iterations of the other models running on the device (one round of turns)
    decode_seqs: int  # the model's running sequences, each decoding
    kv_tokens: int  # their contexts

    def steady_s(self, decode_seqs: int = 0, kv_tokens: int = 0) -> float:
        """The steady iteration, with `decode_seqs` more sequences of `kv_tokens` more context."""
        return self.lm.iteration_s(decode_seqs=self.decode_seqs + decode_seqs, kv_tokens=self.kv_tokens + kv_tokens)

    def add(self, seq: Sequence) -> None:
        self.decode_seqs += 1
        self.kv_tokens += seq.num_tokens
        self.tighten(seq)

    def remove(self, seq: Sequence) -> None:
        self.decode_seqs -= 1
        self.kv_tokens -= seq.num_tokens

    def tighten(self, seq: Sequence) -> None:
        if seq.online and self.fraction * seq.tpot_target_s - self.others_s < self.budget_s:
            self.budget_s = self.fraction * seq.tpot_target_s - self.others_s

    def admits(self, seq: Sequence) -> bool:
        """An offline sequence's steady decode fits the budget."""
        return self.steady_s(1, seq.num_tokens) <= self.budget_s

    def chunk(self, batch: Batch, start: int, n: int) -> int:
        """Prefill tokens [start, start + m) of an offline sequence that this iteration has time for, m ≤ n (0: none).
        The iteration is the steady one plus the batch's prefill chunks so far."""
        lm = self.lm
        left = (self.budget_s - self.steady_s() - lm.c_prefill_s * batch.prefill_tokens
                - lm.c_attn_s * batch.prefill_attn)
        if left <= 0:
            return 0
        # c_prefill·m + c_attn·(m·start + m(m+1)/2) ≤ left, solved for m
        a, b = lm.c_attn_s / 2, lm.c_prefill_s + lm.c_attn_s * (start + 0.5)
        if a > 0:
            m = (-b + math.sqrt(b * b + 4 * a * left)) / (2 * a)
        else:
            m = left / b if b > 0 else n
        return min(n, int(m))


class Harvest(Preemption):
    """Mixin of `Scheduler`: the offline budget of a batch being built (see the module docstring)."""

    def _harvest_gate(self, st: ModelState) -> HarvestGate | None:
        """The budget of `st`'s next batch, or None when nothing limits its offline work (no latency model, no
        online TPOT target among its running or queued sequences or the device's other running ones, harvesting
        off)."""
        fraction, lm = self.config.harvest_fraction, st.latency
        if fraction is None or lm is None:
            return None
        tpot = st.online_tpot_s()
        head = st.queue.peek_online()
        if head is not None and head.tpot_target_s < tpot:
            tpot = head.tpot_target_s
        others_s = 0.0
        for other in self._models.values():
            if other is not st and other.running:
                tpot = min(tpot, other.online_tpot_s())
                others_s += other.steady_s()
        if tpot == math.inf:
            return None
        return HarvestGate(lm, fraction * tpot - others_s, fraction, others_s, len(st.running), st.context_tokens())

    def _yield_offline(self, st: ModelState, gate: HarvestGate) -> bool:
        """Pause running offline sequences, latest first, until the steady iteration fits the budget; whether any
        was paused."""
        if gate.steady_s() <= gate.budget_s:
            return False
        victims = sorted((s for s in st.running if not s.online), key=Sequence.victim_key)
        paused = False
        while victims and gate.steady_s() > gate.budget_s:
            victim = victims.pop()
            gate.remove(victim)
            self._preempt(victim)
            paused = True
        return paused
