"""Scheduler: continuous batching with chunked prefill, queue policies, preemption, offline checkpoints, multi-model.

The GPU is replaced by data: each test runs batches and reports their outcome by hand (vLLM's CPU scheduler tests
do the same). Every helper run checks the scheduler's and the pool's invariants after each step.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.actions import PreemptMode
from core.errors import InputError
from workers.kv_pool import KVLayout, KVPool
from workers.scheduler import Batch, PreemptionCosts, Scheduler, SchedulerConfig, SeqStatus, Sequence

PAGE = 4096
LAYOUT = KVLayout(bytes_per_token=64, block_size_tokens=16)  # 4 blocks (64 tokens) per page


def make(num_pages: int = 64, *, host: int = 0, models: tuple[str, ...] = ("m",), **config) -> Scheduler:
    sched = Scheduler(KVPool(num_pages, page_bytes=PAGE, host_capacity_bytes=host), SchedulerConfig(**config))
    for m in models:
        sched.add_model(m, LAYOUT)
    return sched


def seq(seq_id: int, prompt: int = 10, out: int = 3, *, model: str = "m", arrival: float = 0.0, priority: int = 0,
        online: bool = True, ttft: float = math.inf, tpot: float = math.inf, group: str = "") -> Sequence:
    return Sequence(seq_id, model, prompt, out, arrival, priority=priority, online=online,
                    ttft_deadline_s=arrival + ttft, tpot_target_s=tpot, group_id=group)


def step(sched: Scheduler, now: float, dt: float = 1.0, **kw) -> tuple[Batch | None, list[Sequence]]:
    batch = sched.schedule(now)
    sched.check_invariants()
    if batch is None:
        return None, []
    done = sched.on_batch_done(batch, now + dt, **kw)
    sched.check_invariants()
    return batch, done


def run(sched: Scheduler, start: float = 0.0, limit: int = 10_000) -> tuple[float, list[Batch]]:
    now, batches = start, []
    for _ in range(limit):
        batch, _ = step(sched, now)
        if batch is None:
            return now, batches
        batches.append(batch)
        now += 1.0
    raise AssertionError("did not drain")


def test_one_request_prefills_then_decodes_until_its_output_length() -> None:
    sched = make()
    s = seq(1, prompt=10, out=3)
    sched.add(s)
    b1, _ = step(sched, 0.0)
    assert [(c.start, c.num_tokens) for c in b1.prefills] == [(0, 10)] and not b1.decodes
    assert b1.prefill_tokens == 10 and b1.prefill_attn == 55  # causal triangle 1 + … + 10
    assert s.first_token_s == 1.0 and s.num_generated == 1 and s.num_computed_tokens == 10
    b2, _ = step(sched, 1.0)
    assert b2.decodes == [s] and b2.kv_tokens == 11 and b2.prefill_tokens == 0
    _, done = step(sched, 2.0)
    assert done == [s] and s.status is SeqStatus.FINISHED and s.finish_s == 3.0
    assert s.ttft_s == 1.0 and s.tpot_s == 1.0
    assert sched.schedule(3.0) is None and sched.pool.num_used_pages == 0


def test_long_prompts_are_prefilled_in_chunks_within_the_token_budget() -> None:
    sched = make(max_num_batched_tokens=32)
    s = seq(1, prompt=100, out=2)
    sched.add(s)
    _, batches = run(sched)
    chunks = [(c.start, c.num_tokens) for b in batches for c in b.prefills]
    assert chunks == [(0, 32), (32, 32), (64, 32), (96, 4)]
    assert batches[1].prefill_attn == 32 * 32 + 32 * 33 / 2  # each token attends to the 32 cached + causal part
    assert s.first_token_s == 4.0 and s.finish_s == 5.0


def test_continuous_batching_mixes_new_prefills_with_running_decodes() -> None:
    sched = make(max_num_batched_tokens=64)
    a, b = seq(1, prompt=10, out=5), seq(2, prompt=50, out=2, arrival=1.0)
    sched.add(a)
    step(sched, 0.0)
    sched.add(b)
    batch, _ = step(sched, 1.0)
    assert batch.decodes == [a] and [c.seq for c in batch.prefills] == [b]
    assert batch.prefill_tokens == 50 and batch.kv_tokens == 11


def test_engine_reported_end_of_sequence_finishes_early_and_records_token_ids() -> None:
    sched = make()
    s = seq(1, prompt=4, out=100)
    sched.add(s)
    step(sched, 0.0, token_ids={1: 7})
    _, done = step(sched, 1.0, token_ids={1: 2}, finished={1})
    assert done == [s] and s.num_generated == 2 and s.output_token_ids == [7, 2]


def test_max_num_seqs_bounds_each_batch() -> None:
    sched = make(max_num_seqs=2)
    for i in range(3):
        sched.add(seq(i, prompt=4, out=5))
    batch, _ = step(sched, 0.0)
    assert batch.num_seqs == 2 and sched.num_queued() == 1


@pytest.mark.parametrize(
    ("policy", "groups", "order"),
    [("fcfs", (), [1, 2, 3]), ("priority", (), [3, 2, 1]), ("edf", (), [2, 1, 3]), ("explicit", ("g3", "g1"), [3, 1, 2])],
)
def test_queue_policies_order_admission(policy: str, groups: tuple[str, ...], order: list[int]) -> None:
    sched = make(max_num_seqs=1)
    sched.set_queue_order("m", policy, groups)
    sched.add(seq(1, out=1, arrival=0.0, priority=2, ttft=5.0, group="g1"))
    sched.add(seq(2, out=1, arrival=0.1, priority=1, ttft=1.0, group="g2"))
    sched.add(seq(3, out=1, arrival=0.2, priority=0, ttft=9.0, group="g3"))
    _, batches = run(sched)
    assert [b.prefills[0].seq.seq_id for b in batches] == order
    with pytest.raises(InputError, match="policy"):
        sched.set_queue_order("m", "random")


def test_out_of_pages_preempts_the_lowest_priority_by_recompute() -> None:
    sched = make(num_pages=2, watermark_fraction=0.0)  # 128 tokens of KV
    low = seq(1, prompt=60, out=40, priority=5)
    high = seq(2, prompt=60, out=40, priority=0, arrival=0.1)
    sched.add(low)
    sched.add(high)
    run(sched)
    assert high.num_preemptions == 0 and low.num_preemptions >= 1
    assert low.num_recomputed_tokens > 0
    assert low.status is high.status is SeqStatus.FINISHED and high.finish_s < low.finish_s


def test_under_the_priority_policy_a_waiting_request_preempts_lower_priority_work() -> None:
    sched = make(num_pages=2, watermark_fraction=0.0)
    sched.set_queue_order("m", "priority")
    low = seq(1, prompt=100, out=50, priority=5)
    sched.add(low)
    step(sched, 0.0)
    high = seq(2, prompt=60, out=2, priority=0, arrival=1.0)
    sched.add(high)
    batch, _ = step(sched, 1.0)
    assert [c.seq for c in batch.prefills] == [high] and low.status is SeqStatus.PREEMPTED
    assert batch.decodes == []  # the preempted decode was taken back out of the batch


def test_swap_is_chosen_when_copying_is_cheaper_than_recomputing() -> None:
    costs = PreemptionCosts(swap_s_per_token=1e-6, recompute_s_per_token=1e-4, recompute_attn_s=0.0)
    sched = Scheduler(KVPool(2, page_bytes=PAGE, host_capacity_bytes=1 << 20), SchedulerConfig(watermark_fraction=0))
    sched.add_model("m", LAYOUT, preemption_costs=costs, policy="priority")
    low, high = seq(1, prompt=100, out=20, priority=5), seq(2, prompt=60, out=2, priority=0, arrival=1.0)
    sched.add(low)
    step(sched, 0.0)
    sched.add(high)
    batch, _ = step(sched, 1.0)
    assert low.status is SeqStatus.SWAPPED and low.num_recomputed_tokens == 0
    assert [(t.seq_id, t.num_tokens) for t in batch.swap_out] == [(1, 100)] and len(batch.swap_out[0].block_ids) == 7
    _, batches = run(sched, 2.0)
    swap_in = [t for b in batches for t in b.swap_in]
    assert [(t.seq_id, t.num_tokens) for t in swap_in] == [(1, 100)]
    assert low.status is SeqStatus.FINISHED and low.num_recomputed_tokens == 0 and sched.pool.host_bytes_used == 0


def test_offline_requests_checkpoint_each_step_and_resume_without_recompute() -> None:
    sched = make(num_pages=2, host=1 << 20, watermark_fraction=0.0)
    offline = seq(1, prompt=70, out=30, online=False, priority=9)
    sched.add(offline)
    b, _ = step(sched, 0.0)
    assert [(t.first_token, t.num_tokens) for t in b.checkpoint] == [(0, 70)]
    b, _ = step(sched, 1.0)
    assert [(t.first_token, t.num_tokens) for t in b.checkpoint] == [(70, 1)]
    assert sched.pool.host_tokens(1) == 71
    online = seq(2, prompt=60, out=3, arrival=2.0)
    sched.add(online)
    step(sched, 2.0)
    assert offline.status is SeqStatus.PAUSED_OFFLINE and offline.num_preemptions == 1
    run(sched, 3.0)
    assert offline.status is SeqStatus.FINISHED and offline.num_recomputed_tokens == 0
    assert online.finish_s < offline.finish_s


def test_a_request_larger_than_the_pool_is_dropped_with_a_reason_not_a_crash() -> None:
    sched = make(num_pages=1)  # 64 tokens
    big = seq(1, prompt=100, out=5)
    grows = seq(2, prompt=60, out=20)
    sched.add(big)
    sched.add(grows)
    run(sched)
    dropped = sched.take_dropped()
    assert {s.seq_id for s in dropped} == {1, 2}
    assert all(s.status is SeqStatus.DROPPED and s.drop_reason == "exceeds_kv_capacity" for s in dropped)
    assert grows.num_generated == 64 - 60 + 1 and sched.pool.num_used_pages == 0


def test_each_iteration_runs_one_model_and_models_with_online_work_take_turns() -> None:
    sched = make(models=("a", "b"))
    a = seq(1, model="a", prompt=8, out=6, ttft=1.0, tpot=0.1)
    sched.add(a)
    step(sched, 0.0, dt=0.01)
    b = seq(2, model="b", prompt=8, out=6, arrival=0.01, ttft=1.0, tpot=0.1)
    sched.add(b)
    models = []
    now = 0.01
    while (batch := sched.schedule(now)) is not None:
        models.append(batch.model)
        now += 0.01
        sched.on_batch_done(batch, now)
    # Nothing is overdue (a's decode is due at 0 + 0.05, b's request at 0.01 + 0.5): b never ran, so it goes
    # first, then they take turns.
    assert models[:4] == ["b", "a", "b", "a"]
    assert a.status is b.status is SeqStatus.FINISHED


def test_offline_only_models_still_run_every_offline_period() -> None:
    sched = make(models=("on", "off"), offline_period_s=0.05)
    sched.add(seq(1, model="on", prompt=8, out=40, ttft=1.0, tpot=0.01))
    sched.add(seq(2, model="off", prompt=8, out=3, online=False, priority=9))
    models, now = [], 0.0
    while (batch := sched.schedule(now)) is not None and now < 0.2:
        models.append(batch.model)
        now += 0.01
        sched.on_batch_done(batch, now)
    assert "off" in models and models.count("on") > models.count("off")


def test_an_overdue_model_runs_before_its_turn() -> None:
    sched = make(models=("a", "b", "c"), urgency_fraction=1.0)
    sched.add(seq(1, model="a", prompt=8, out=50, ttft=1.0, tpot=0.03))
    sched.add(seq(2, model="b", prompt=8, out=50, ttft=1.0, tpot=0.5))
    sched.add(seq(3, model="c", prompt=8, out=50, ttft=1.0, tpot=0.5))
    models, now = [], 0.0
    while (batch := sched.schedule(now)) is not None and now < 1.0:
        models.append(batch.model)
        now += 0.02  # taking turns, a would run every 0.06 s; its decode is due 0.03 s after it ran
        sched.on_batch_done(batch, now)
    assert models[:4] == ["a", "b", "a", "c"]  # a is overdue before its turn comes
    assert models.count("a") > 1.5 * models.count("b")


def test_inactive_models_queue_but_do_not_run() -> None:
    sched = Scheduler(KVPool(8, page_bytes=PAGE))
    sched.add_model("m", LAYOUT, active=False)
    sched.add(seq(1))
    assert sched.schedule(0.0) is None and not sched.has_runnable_work
    sched.set_active("m", True)
    assert sched.schedule(0.0) is not None


def test_actions_swap_out_hold_and_swap_in() -> None:
    sched = make(host=1 << 20)
    s = seq(1, prompt=40, out=10)
    sched.add(s)
    step(sched, 0.0)
    assert sched.swap_out([1, 99]) == [1]
    assert s.status is SeqStatus.SWAPPED and s.held and sched.pool.pages_used("m") == 0
    batch = sched.schedule(1.0)  # a copy-only batch carries the swap-out
    assert batch.model == "" and [t.num_tokens for t in batch.swap_out] == [40]
    sched.on_batch_done(batch, 1.0)
    assert sched.schedule(1.0) is None  # held: not swapped back in on its own
    assert sched.swap_in([1]) == [1]
    batch, _ = step(sched, 2.0)
    assert batch.decodes == [s] and [t.num_tokens for t in batch.swap_in] == [40]


def test_actions_pause_and_resume_offline_work() -> None:
    sched = make(host=1 << 20)
    on, off1, off2 = seq(1, out=20), seq(2, out=20, online=False), seq(3, out=20, online=False, arrival=0.5)
    for s in (on, off1, off2):
        sched.add(s)
    step(sched, 0.0)
    paused = sched.pause_offline(free_kv_tokens=5)  # one is enough: the latest-arrived goes first
    assert paused == [3] and off2.status is SeqStatus.PAUSED_OFFLINE and off1.status is SeqStatus.RUNNING
    assert sorted(sched.pause_offline()) == [2]
    batch, _ = step(sched, 1.0)
    assert batch.decodes == [on]
    assert sorted(sched.resume_offline()) == [2, 3]
    batch, _ = step(sched, 2.0)
    assert {s.seq_id for s in batch.decodes} == {1, 2, 3} and off1.num_recomputed_tokens == 0


def test_evicted_and_removed_sequences_leave_the_device() -> None:
    sched = make()
    a, b = seq(1, prompt=30, out=10), seq(2, prompt=30, out=10)
    sched.add(a)
    sched.add(b)
    step(sched, 0.0)
    assert sched.preempt([1], PreemptMode.RECOMPUTE) == [1]
    assert a.status is SeqStatus.PREEMPTED and a.num_computed_tokens == 0
    removed = sched.remove([2])
    assert removed == [b] and b.num_computed_tokens == 30 and sched.get(2) is None
    other = make()
    other.add(b)  # migrated without its KV: recomputed on the new device
    assert b.status is SeqStatus.PREEMPTED and b.num_recomputed_tokens == 30
    dropped = sched.drop([1], "no_replica")
    assert dropped == [a] and sched.take_dropped() == [a] and sched.num_sequences == 0


def test_a_limit_shrink_while_serving_completes_as_pages_free() -> None:
    sched = make(num_pages=8, watermark_fraction=0.0)
    for i in range(4):
        sched.add(seq(i, prompt=60, out=20))
    step(sched, 0.0)
    assert sched.pool.pages_used("m") == 4
    assert sched.pool.set_limit("m", 2, revision=1).status == "deferred"
    run(sched, 1.0)
    assert not sched.pool.limit_pending("m")
    assert all(s.status is SeqStatus.FINISHED for s in sched.sequences()) and sched.num_sequences == 0


def test_time_never_goes_backwards() -> None:
    sched = make()
    sched.add(seq(1))
    sched.schedule(5.0)
    with pytest.raises(ValueError, match="backwards"):
        sched.schedule(4.0)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(InputError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(InputError, match="model"):
        make().add(seq(1, model="unknown"))


workloads = st.lists(
    st.tuples(st.integers(1, 150), st.integers(1, 40), st.integers(0, 3), st.booleans(), st.integers(0, 3)),
    min_size=1, max_size=25,
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(workloads, st.sampled_from([None, PreemptMode.SWAP, PreemptMode.RECOMPUTE]), st.integers(2, 6))
def test_any_workload_drains_with_every_request_finished_or_dropped(work, mode, pages) -> None:
    sched = Scheduler(KVPool(pages, page_bytes=PAGE, host_capacity_bytes=4096 * 3),
                      SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4, preempt_mode=mode))
    sched.add_model("a", LAYOUT)
    sched.add_model("b", KVLayout(bytes_per_token=256, block_size_tokens=8))
    seqs = []
    for i, (prompt, out, prio, online, model) in enumerate(work):
        s = seq(i, prompt, out, model="ab"[model % 2], arrival=i * 0.1, priority=prio, online=online,
                ttft=2.0 if online else math.inf, tpot=0.5 if online else math.inf)
        seqs.append(s)
        sched.add(s)
    run(sched)
    dropped = {s.seq_id for s in sched.take_dropped()}
    for s in seqs:
        assert s.status is (SeqStatus.DROPPED if s.seq_id in dropped else SeqStatus.FINISHED)
        assert s.status is SeqStatus.DROPPED or s.num_generated == s.max_output_tokens
    assert sched.pool.num_used_pages == 0 and sched.pool.host_bytes_used == 0


def test_a_tensor_parallel_sequence_blocked_by_its_members_memory_waits_instead_of_being_dropped() -> None:
    member = KVPool(2, page_bytes=PAGE)  # 128 tokens
    member.add_model("own", LAYOUT)
    sched = Scheduler(KVPool(8, page_bytes=PAGE), SchedulerConfig(watermark_fraction=0.0))
    sched.add_model("tp", LAYOUT, mirrors=(member,))
    assert member.allocate("own", 99, 64)  # the member's own model holds one of its two pages
    tp = seq(1, prompt=60, out=20, model="tp")  # grows past 64 tokens: needs a second page on the member too
    sched.add(tp)
    now, _ = run(sched)
    assert tp.status is SeqStatus.PREEMPTED and not sched.take_dropped()  # waits: the member's page may free
    assert tp.num_generated == 64 - 60 + 1 and member.num_mirrored_pages == 0
    member.free(99)
    run(sched, now)
    assert tp.status is SeqStatus.FINISHED and member.num_mirrored_pages == 0


def test_the_scheduler_and_pool_modules_stay_free_of_torch() -> None:
    """workers.scheduler and workers.kv_pool are split into modules; the simulator runs them all, without torch."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "workers"
    seen, todo = set(), ["scheduler", "kv_pool"]
    while todo:
        name = todo.pop()
        seen.add(name)
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for mod in mods:
                assert mod.split(".")[0] not in {"torch", "triton"}, f"workers/{name}.py imports {mod}"
                if mod.startswith("workers.") and mod.split(".")[1] not in seen:
                    todo.append(mod.split(".")[1])
    assert {"rotations", "decode_runs", "kv_pages", "kv_host", "sequence"} <= seen
