"""Harvesting (workers.harvest): offline work in a model's batches only within the time its online TPOT leaves.

Times follow a hand-made latency model: an iteration costs 10 ms, plus 10 ms per decoding sequence and 1 ms per
prefill token; with the default `harvest_fraction` of 0.5 and a TPOT target of 100 ms, the steady iteration may
take 50 ms, which is four sequences.
"""

from __future__ import annotations

import math

import pytest

from core.errors import InputError
from core.latency import LatencyModel
from workers.kv_pool import KVLayout, KVPool
from workers.scheduler import Scheduler, SchedulerConfig, SeqStatus, Sequence, WaitQueue

PAGE = 4096
LAYOUT = KVLayout(bytes_per_token=64, block_size_tokens=16)
LM = LatencyModel(arch="t", gpu_type="t", tp=1, c0_s=0.01, c_prefill_s=0.001, c_attn_s=0.0, c_decode_s=0.01,
                  c_kv_s=0.0, disk_to_host_s=1.0, host_to_gpu_s=1.0, kv_swap_bytes_per_s=1e9, kv_bytes_per_token=64)
TPOT = 0.1


def make(latency: LatencyModel | None = LM, **config) -> Scheduler:
    sched = Scheduler(KVPool(256, page_bytes=PAGE, host_capacity_bytes=1 << 20),
                      SchedulerConfig(**config))
    sched.add_model("m", LAYOUT, latency=latency)
    return sched


def online(seq_id: int, arrival: float = 0.0, prompt: int = 10, out: int = 50) -> Sequence:
    return Sequence(seq_id, "m", prompt, out, arrival, ttft_deadline_s=arrival + 1.0, tpot_target_s=TPOT)


def offline(seq_id: int, arrival: float = 0.0, prompt: int = 10, out: int = 50) -> Sequence:
    return Sequence(seq_id, "m", prompt, out, arrival, priority=9, online=False)


def test_offline_fills_only_the_steady_iteration_budget_and_online_work_behind_it_is_admitted() -> None:
    sched = make()
    a = online(1, prompt=1)  # one-token prompts: their prefill costs 1 ms each
    offs = [offline(i, 0.1 * i, prompt=1) for i in range(2, 7)]
    c = online(7, 0.7, prompt=1)
    for s in (a, *offs, c):
        sched.add(s)
    batch = sched.schedule(0.0)
    sched.check_invariants()
    # a, then offline 2, 3, 4 (steady 10 + 4 × 10 ms = 50 ms); 5 would make it 60 ms, so it waits and the online
    # sequence 7 queued behind it is admitted; 7 takes the steady iteration past 50 ms, so the latest offline
    # sequence admitted (4) is paused again.
    assert [p.seq.seq_id for p in batch.prefills] == [1, 2, 3, 7]
    assert offs[2].status is not SeqStatus.RUNNING and offs[2] in sched._models["m"].queue
    assert all(s.status is SeqStatus.WAITING for s in offs[3:])
    assert LM.iteration_s(decode_seqs=len(sched._models["m"].running)) <= 0.5 * TPOT + 1e-12


def test_an_online_arrival_pauses_running_offline_work_latest_first_and_it_resumes_without_recompute() -> None:
    sched = make()
    offs = [offline(i, 0.1 * i, out=200) for i in range(1, 9)]
    for s in offs:
        sched.add(s)
    now = 0.0
    for _ in range(3):  # no online work: nothing limits offline work but KV
        batch = sched.schedule(now)
        now += 0.1
        sched.on_batch_done(batch, now)
    assert all(s.status is SeqStatus.RUNNING for s in offs) and all(s.checkpointing for s in offs)
    a = online(100, now)
    sched.add(a)
    batch = sched.schedule(now)
    sched.check_invariants()
    running = sched._models["m"].running
    assert a in running and LM.iteration_s(decode_seqs=len(running)) <= 0.5 * TPOT + 1e-12
    paused = [s for s in offs if s not in running]
    assert paused == offs[3:]  # the latest arrivals yield
    assert all(s.status is SeqStatus.PAUSED_OFFLINE for s in paused)
    # Once the online sequence finishes, the paused work comes back from its checkpoints.
    now += 0.05
    sched.on_batch_done(batch, now)
    for _ in range(400):
        batch = sched.schedule(now)
        if batch is None:
            break
        now += 0.05
        sched.on_batch_done(batch, now)
    assert all(s.status is SeqStatus.FINISHED for s in (*offs, a))
    assert sum(s.num_recomputed_tokens for s in offs) == 0


def test_an_offline_prefill_chunk_gets_only_the_time_the_iteration_has_left() -> None:
    sched = make()
    a, b = online(1, prompt=10), offline(2, 0.1, prompt=100)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule(0.0)
    # Budget 50 ms: the steady iteration with a is 20 ms and a's prefill 10 ms, which leaves 20 ms: 20 tokens.
    assert [(p.seq.seq_id, p.num_tokens) for p in batch.prefills] == [(1, 10), (2, 20)]
    sched.on_batch_done(batch, 0.05)
    batch = sched.schedule(0.05)
    # Now a decodes and b continues: steady 30 ms, so 20 ms are left for b's chunk again.
    assert [(p.seq.seq_id, p.num_tokens) for p in batch.prefills] == [(2, 20)] and batch.decodes == [a]


def test_without_a_latency_model_or_with_harvesting_off_offline_work_is_limited_by_kv_alone() -> None:
    for sched in (make(latency=None), make(harvest_fraction=None)):
        seqs = [online(1), *(offline(i, 0.1 * i) for i in range(2, 9))]
        for s in seqs:
            sched.add(s)
        batch = sched.schedule(0.0)
        assert [p.seq.seq_id for p in batch.prefills] == [s.seq_id for s in seqs]


def test_harvest_fraction_is_checked() -> None:
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InputError, match="harvest_fraction"):
            SchedulerConfig(harvest_fraction=bad)


def test_online_work_queued_behind_offline_work_makes_its_model_due() -> None:
    sched = Scheduler(KVPool(256, page_bytes=PAGE), SchedulerConfig())
    sched.add_model("a", LAYOUT)
    sched.add_model("b", LAYOUT)
    sched.add(Sequence(1, "a", 10, 5, 0.0, priority=9, online=False))
    sched.add(Sequence(2, "a", 10, 5, 0.1, ttft_deadline_s=0.2, tpot_target_s=TPOT))
    sched.add(Sequence(3, "b", 10, 5, 0.0, ttft_deadline_s=10.0, tpot_target_s=TPOT))
    # a's online request is due at 0.1 + 0.5 × 0.1 s; b's at 5 s: a runs first although its head is offline.
    assert sched._due(sched._models["a"]) == (pytest.approx(0.15), True)
    assert sched.schedule(0.2).model == "a"


def test_wait_queue_peek_online_skips_offline_members_and_keeps_no_stale_entries() -> None:
    q = WaitQueue("fcfs")
    off, on = offline(1, 0.0), online(2, 1.0)
    q.push(off)
    q.push(on)
    assert q.peek() is off and q.peek_online() is on
    q.discard(on)
    assert q.peek_online() is None and q.peek() is off
    for i in range(1000):  # pushed and taken without anyone peeking the online heap
        s = online(10 + i, 2.0 + i)
        q.push(s)
        q.discard(s)
    assert len(q._online) <= 2 * len(q) + 65
    assert math.isinf(off.tpot_target_s)


def test_the_budget_is_a_round_of_the_device_s_models_so_offline_work_yields_to_another_model_s_online_work() -> None:
    sched = Scheduler(KVPool(256, page_bytes=PAGE, host_capacity_bytes=1 << 20), SchedulerConfig())
    sched.add_model("on", LAYOUT, latency=LM)
    sched.add_model("off", LAYOUT, latency=LM)
    a, b = (Sequence(i, "on", 1, 50, 0.0, ttft_deadline_s=1.0, tpot_target_s=TPOT) for i in (1, 2))
    for s in (a, b):
        sched.add(s)
    batch = sched.schedule(0.0)
    assert batch.model == "on"
    sched.on_batch_done(batch, 0.01)
    offs = [Sequence(10 + i, "off", 1, 50, 0.01, priority=9, online=False) for i in range(6)]
    for s in offs:
        sched.add(s)
    batch = sched.schedule(0.01)
    # "on" decodes its 2 sequences in 30 ms of every round; of the 50 ms budget, "off" gets 20 ms: 10 ms per
    # iteration and 10 ms for its one sequence.
    assert batch.model == "off" and [p.seq.seq_id for p in batch.prefills] == [10]
    assert all(s.status is SeqStatus.WAITING for s in offs[1:])
