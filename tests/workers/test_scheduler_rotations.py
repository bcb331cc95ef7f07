"""Rotations (several models' decode turns played ahead) give exactly what scheduling every iteration gives.

Each scenario is driven twice over the same arrivals and the same step timing: once asking the scheduler every
iteration, once letting it play rotations ahead, cut at each arrival the way the simulator cuts them (steps ended
are committed, the step in flight runs alone). Every sequence must get its first token and finish at the same
times, with the same preemptions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.kv_pool import KVLayout, KVPool
from workers.scheduler import Batch, Scheduler, SchedulerConfig, Sequence

PAGE = 4096
LAYOUT = KVLayout(bytes_per_token=64, block_size_tokens=16)  # 4 blocks (64 tokens) per page
C0, C_PREFILL, C_DECODE, C_KV = 0.01, 1e-4, 1e-3, 1e-6


def step_s(batch: Batch) -> float:
    return C0 + C_PREFILL * batch.prefill_tokens + C_DECODE * len(batch.decodes) + C_KV * batch.kv_tokens


def timing(model: str, decode_seqs: int, kv_tokens: int) -> tuple[float, float]:
    return C0 + C_DECODE * decode_seqs + C_KV * kv_tokens, C_KV * decode_seqs


def workload(seed: int, num_models: int, n: int) -> list[tuple[float, dict]]:
    """Arrivals over a few models; online requests of two TPOT targets and offline ones, long decodes."""
    rng = np.random.default_rng(seed)
    out = []
    t = 0.0
    for i in range(n):
        t += float(rng.exponential(0.4))
        kind = int(rng.integers(0, 3))
        tpot = (0.05, 0.2, math.inf)[kind]
        out.append((t, {"seq_id": i, "model": f"m{int(rng.integers(0, num_models))}",
                        "prompt_tokens": int(rng.integers(5, 120)), "max_output_tokens": int(rng.integers(20, 400)),
                        "arrival_s": t, "online": kind < 2, "priority": 0 if kind < 2 else 9,
                        "ttft_deadline_s": t + 1.0 if kind < 2 else math.inf, "tpot_target_s": tpot}))
    return out


def drive(arrivals: list[tuple[float, dict]], num_models: int, pages: int, *, ahead: bool) -> dict:
    sched = Scheduler(KVPool(pages, page_bytes=PAGE), SchedulerConfig(watermark_fraction=0.0))
    for m in range(num_models):
        sched.add_model(f"m{m}", LAYOUT)
    seqs = {}
    pending = list(arrivals)
    now, rotations = 0.0, 0

    def arrive(until: float) -> None:
        while pending and pending[0][0] <= until:
            seq = Sequence(**pending.pop(0)[1])
            seqs[seq.seq_id] = seq
            sched.add(seq)

    while True:
        arrive(now)
        batch = sched.schedule(now)
        sched.take_dropped()
        if batch is None:
            if not pending:
                break
            now = pending[0][0]
            continue
        rot = sched.plan_rotation(batch, now, timing, 4096) if ahead else None
        if rot is None:
            now += step_s(batch)
            sched.on_batch_done(batch, now)
            continue
        rotations += 1
        cut = pending[0][0] if pending else math.inf
        if cut >= rot.end_s:
            now = rot.end_s
            sched.commit_rotation(rot, rot.num_steps, now)
            continue
        k = rot.steps_done_by(cut)  # the simulator's interrupt: steps ended are committed …
        assert not sched.commit_rotation(rot, k, cut)
        flight = rot.batches[rot.order[k]]
        sched.prepare_step(flight)  # … and the step in flight ends alone
        if k:
            sched.mark_ran(flight.model, rot.turn_s(k))
        flight.num_steps = 1
        now = rot.ends_s[k]
        sched.on_batch_done(flight, now)
        sched.check_invariants()
    assert not sched.num_sequences
    return {"rotations": rotations, **{i: (s.first_token_s, s.finish_s, s.num_preemptions, s.status.value)
                                       for i, s in seqs.items()}}


# Roomy pools, and small ones where models preempt one another (4 blocks per page: which blocks share a page
# decides when pages free, so KV must be taken in the order of single iterations).
@pytest.mark.parametrize(("seed", "num_models", "pages"), [(0, 3, 4096), (1, 4, 4096), (2, 2, 4096), (3, 3, 40),
                                                           (4, 3, 30), (5, 2, 25)])
def test_rotations_give_exactly_what_scheduling_every_iteration_gives(seed: int, num_models: int, pages: int) -> None:
    arrivals = workload(seed, num_models, 60)
    slow = drive(arrivals, num_models, pages, ahead=False)
    fast = drive(arrivals, num_models, pages, ahead=True)
    assert fast.pop("rotations") > 10 and slow.pop("rotations") == 0
    assert fast.keys() == slow.keys()
    for i in slow:
        first_s, finish_s, preemptions, status = slow[i]
        assert fast[i][2:] == (preemptions, status), i
        assert fast[i][0] == pytest.approx(first_s, rel=1e-9, abs=1e-9), i
        assert fast[i][1] == pytest.approx(finish_s, rel=1e-9, abs=1e-9), i
