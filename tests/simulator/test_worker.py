"""SimulatedWorker as a WorkerClient: hand-computed latencies, residency, memory, every action kind, revisions."""

from __future__ import annotations

import pytest

from core.actions import (
    Action,
    ActivateModel,
    DeactivateModel,
    EvictRequests,
    MigrateRequests,
    PreemptMode,
    PreemptOffline,
    ReconfigureParallelism,
    Residency,
    ResizeKV,
    ResumeOffline,
    SetQueueOrder,
    SetRouting,
    SwapInKV,
    SwapOutKV,
)
from core.latency import LatencyBook, LatencyModel
from core.protocols import WorkerClient
from core.requests import Request
from simulator.config import SimConfig
from simulator.worker import LocalHooks, SimulatedWorker
from tests.simulator.conftest import small_fleet
from workers.scheduler import SchedulerConfig, SeqStatus

# Simple coefficients so that times can be computed by hand: an iteration costs 10 ms, plus 1 ms per prefill token
# and 2 ms per decoding sequence; loading takes 4 s from disk and 1 s from host memory.
SIMPLE = {"arch": "Llama-3.1-8B", "gpu_type": "H100-SXM", "c0_s": 0.01, "c_prefill_s": 0.001, "c_attn_s": 0.0,
          "c_decode_s": 0.002, "c_kv_s": 0.0, "disk_to_host_s": 4.0, "host_to_gpu_s": 1.0,
          "kv_swap_bytes_per_s": 131072e4, "kv_bytes_per_token": 131072, "source": "profile:simple"}


def setup(num: int = 2, models=None, **config) -> tuple[list[SimulatedWorker], LocalHooks]:
    extra = {} if models is None else {"models": [{"name": m, "arch": "Llama-3.1-8B", "tp_options": [1, 2],
                                                   "max_context_tokens": 8192} for m in models]}
    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": num, "gpus_per_node": num}], **extra)
    book = LatencyBook(profiles={("Llama-3.1-8B", "H100-SXM", tp): LatencyModel(tp=tp, **SIMPLE) for tp in (1, 2)})
    hooks = LocalHooks()
    workers = [SimulatedWorker(g, fleet, book, SimConfig(check_invariants=True, **config), hooks)
               for g in fleet.gpu_ids()]
    hooks.workers.update({w.worker_id: w for w in workers})
    return workers, hooks


def act(worker: SimulatedWorker, args, *, seq: int = 0, revision: int = 1, plan: str = "p"):
    return worker.apply(Action(plan_id=plan, seq=seq, worker_id=worker.worker_id, args=args, revision=revision,
                               reason="test"))


def activate(worker: SimulatedWorker, gpu_ids=None, model: str = "chat", **kw):
    ids = gpu_ids or (worker.worker_id,)
    return act(worker, ActivateModel(model=model, replica_id=f"{model}@{ids[0]}", tp=len(ids), gpu_ids=ids), **kw)


def serving() -> tuple[SimulatedWorker, LocalHooks, float]:
    """A worker whose replica of `chat` has finished loading; returns it, its hooks and the time."""
    (w, _), hooks = setup()
    activate(w)
    hooks.kernel.run()
    return w, hooks, hooks.kernel.now_s


def request(i: int, t: float = 0.0, *, prompt: int = 100, output: int = 3, cls: str = "interactive") -> Request:
    return Request(i, t, "chat", cls, prompt, output)


def test_it_implements_the_worker_client_protocol() -> None:
    (w, _), _ = setup()
    assert isinstance(w, WorkerClient)


def test_latencies_follow_the_latency_model_by_hand() -> None:
    (w, _), hooks = setup()
    result = activate(w)
    assert result.status == "applied" and result.duration_s == pytest.approx(5.0)  # cold: 4 s disk + 1 s host→GPU
    assert w.submit(request(1)).status == "queued"  # weights still loading
    hooks.kernel.run()
    (s,) = hooks.finished
    # Prefill of 100 tokens: 10 ms + 100 ms; then two decode steps of 10 + 2 ms.
    assert s.first_token_s == pytest.approx(5.11) and s.finish_s == pytest.approx(5.134)
    assert s.ttft_s == pytest.approx(5.11) and s.tpot_s == pytest.approx(0.012)
    hooks.kernel.run(until_s=6.0)
    assert w.submit(request(2, 6.0)).status == "accepted"  # starts its prefill at once (6.00–6.11)
    assert w.submit(request(3, 6.0)).status == "accepted"  # joins the next iteration
    hooks.kernel.run()
    a, b = hooks.finished[1:]
    # 6.110–6.222: a decodes while b prefills (10 + 2 + 100 ms); 6.222–6.236: both decode (10 + 4 ms), a ends;
    # 6.236–6.248: b decodes alone and ends.
    assert a.first_token_s == pytest.approx(6.11) and b.first_token_s == pytest.approx(6.222)
    assert a.finish_s == pytest.approx(6.236) and b.finish_s == pytest.approx(6.248)
    assert a.tpot_s == pytest.approx(0.063) and b.ttft_s == pytest.approx(0.222)


def test_submit_rejects_unknown_models_and_prompts_beyond_the_context() -> None:
    (w, _), _ = setup()
    assert w.submit(request(1)).status == "rejected"  # no replica yet
    activate(w)
    too_long = w.submit(request(2, prompt=9000))
    assert too_long.status == "rejected" and "8192" in too_long.message
    assert w.submit(Request(3, 0.0, "other", "interactive", 10, 10)).status == "rejected"


def test_repeated_keys_return_the_first_result_and_revisions_are_enforced() -> None:
    (w, _), _ = setup()
    first = activate(w, revision=3)
    again = activate(w, revision=3)
    assert again == first and len(w.replicas) == 1
    # The activation set the KV limit (none) at revision 3: another limit at revision 3 conflicts with it.
    assert act(w, ResizeKV(replica_id="chat@h100/0", kv_limit_gib=10), seq=1, revision=3).status == "conflict"
    resize = act(w, ResizeKV(replica_id="chat@h100/0", kv_limit_gib=10), seq=2, revision=4)
    assert resize.status == "applied" and w.replicas["chat@h100/0"].kv_limit_pages == 320  # 10 GiB of 32 MiB pages
    assert act(w, ResizeKV(replica_id="chat@h100/0", kv_limit_gib=5), seq=3, revision=4).status == "conflict"
    assert act(w, ResizeKV(replica_id="chat@h100/0", kv_limit_gib=5), seq=4, revision=2).status == "stale"
    assert act(w, ResizeKV(replica_id="chat@h100/0", kv_limit_gib=5), seq=5, revision=5).status == "applied"
    assert w.status().revision == 5
    bad = act(w, ResizeKV(replica_id="nope", kv_limit_gib=1), seq=6, revision=6)
    assert bad.status == "failed" and "nope" in bad.message
    assert act(w, SetRouting(model="chat", weights={"x": 1.0}), seq=7).status == "failed"


def test_a_shrink_below_the_pages_in_use_is_deferred_until_they_free() -> None:
    (w, _), hooks = setup()
    activate(w)
    hooks.kernel.run()
    w.submit(request(1, hooks.kernel.now_s, prompt=1000, output=400))
    hooks.kernel.run(until_s=hooks.kernel.now_s + 1.0)
    assert w.status().kv_pages_used == 4  # 1000 tokens × 128 KiB in 32 MiB pages
    result = act(w, ResizeKV(replica_id="chat@h100/0", kv_limit_gib=0), seq=1, revision=2)
    assert result.status == "deferred" and w.status().replicas[0].limit_pending
    hooks.kernel.run()
    assert [s.drop_reason for s in hooks.dropped] == ["exceeds_kv_capacity"]  # a zero limit holds nothing
    assert not w.status().replicas[0].limit_pending


def test_a_positive_kv_limit_below_one_page_still_holds_a_request() -> None:
    """Plans size KV in bytes; a share smaller than the worker's page (a tiny model next to large ones) gets one
    page, not zero pages and every request dropped as exceeding KV capacity."""
    (w, _), hooks = setup()
    act(w, ActivateModel(model="chat", replica_id="chat@h100/0", tp=1, gpu_ids=("h100/0",), kv_limit_gib=0.001))
    hooks.kernel.run()
    assert w.status().replicas[0].kv_limit_pages == 1
    w.submit(request(1, hooks.kernel.now_s, prompt=100, output=3))
    hooks.kernel.run()
    assert not hooks.dropped and len(hooks.finished) == 1


def test_deactivating_to_host_keeps_weights_warm_for_a_fast_reactivation() -> None:
    (w, _), hooks = setup()
    activate(w)
    hooks.kernel.run()
    w.submit(request(1, hooks.kernel.now_s, output=50))
    drain = act(w, DeactivateModel(model="chat", replica_id="chat@h100/0", to=Residency.HOST), seq=1, revision=2)
    assert drain.status == "deferred" and w.status().replicas[0].draining  # completes once drained
    assert drain.duration_s == pytest.approx(1.0)  # the weight copy that follows the drain
    hooks.kernel.run()
    assert len(hooks.finished) == 1  # the running request finished before the replica left
    assert hooks.settled == {"p:1": (True, 1.0)} and not w.status().replicas[0].draining
    status = w.status()
    assert status.replicas[0].residency is Residency.HOST and status.memory_weights_gib == 0
    assert status.kv_pages_total > 2000
    back = activate(w, seq=2, revision=3)
    assert back.duration_s == pytest.approx(1.0)  # from host memory


def test_a_drain_with_nothing_running_leaves_at_once() -> None:
    (w, _), hooks = setup()
    activate(w)
    hooks.kernel.run()
    result = act(w, DeactivateModel(model="chat", replica_id="chat@h100/0", to=Residency.COLD), seq=1, revision=2)
    assert result.status == "applied" and "chat@h100/0" not in w.replicas and hooks.settled == {}


def test_activating_a_draining_replica_cancels_the_drain() -> None:
    (w, _), hooks = setup()
    activate(w)
    hooks.kernel.run()
    now = hooks.kernel.now_s
    w.submit(request(1, now, output=50))
    hooks.kernel.run(until_s=now + 0.2)
    assert act(w, DeactivateModel(model="chat", replica_id="chat@h100/0", to=Residency.HOST), seq=1,
               revision=2).status == "deferred"
    again = activate(w, seq=2, revision=3)
    assert again.status == "applied" and "drain cancelled" in again.message and again.duration_s == 0
    assert hooks.settled == {"p:1": (False, 0.0)}  # the deactivation ended unfinished
    assert not w.status().replicas[0].draining
    hooks.kernel.run()
    assert len(hooks.finished) == 1 and w.replicas["chat@h100/0"].residency is Residency.ACTIVE  # it stayed
    assert w.submit(request(2, hooks.kernel.now_s)).status == "accepted"  # and takes requests again


def test_activation_needs_memory_for_the_weights_and_one_full_context() -> None:
    fleet = small_fleet(models=[{"name": "big", "arch": "Llama-3.1-70B", "tp_options": [1, 2]}])
    hooks = LocalHooks()
    w = SimulatedWorker("h100/0", fleet, LatencyBook(), SimConfig(), hooks)
    result = act(w, ActivateModel(model="big", replica_id="big@h100/0", gpu_ids=("h100/0",)))
    assert result.status == "failed" and "GiB" in result.message
    assert w.status().memory_weights_gib == 0


def test_tensor_parallel_replicas_take_kv_on_every_member_as_they_use_it() -> None:
    (w0, w1), hooks = setup(models=("chat", "code"))
    assert activate(w0, gpu_ids=("h100/0", "h100/1")).status == "applied"
    assert w1.status().member_of == ("chat@h100/0",) and w1.status().memory_weights_gib == pytest.approx(
        w0.status().memory_weights_gib)
    assert w1.status().kv_pages_used == 0 and w1.status().kv_pages_total > 2000  # nothing grabbed up front
    assert w0.status().replicas[0].kv_limit_pages is None
    # A second model co-located on the member (once, the group took every free page there and this failed).
    assert activate(w1, model="code", seq=1).status == "applied"
    hooks.kernel.run()
    w0.submit(request(1, hooks.kernel.now_s, prompt=1000, output=400))
    w1.submit(Request(2, hooks.kernel.now_s, "code", "interactive", 100, 50))
    hooks.kernel.run(until_s=hooks.kernel.now_s + 1.0)
    used = w0.pool.pages_used("chat")
    assert used == 2 and w1.pool.num_mirrored_pages == used  # 1000 tokens × 64 KiB per rank in 32 MiB pages
    assert w1.status().kv_pages_used == used + w1.pool.pages_used("code")
    hooks.kernel.run()
    assert len(hooks.finished) == 2 and w1.pool.num_mirrored_pages == 0
    w1.fail()  # losing a member takes the group down
    assert "chat@h100/0" not in w0.replicas and w0.status().memory_weights_gib == 0


def test_two_tensor_parallel_replicas_share_one_mesh() -> None:
    (w0, w1), hooks = setup(models=("chat", "code"))
    assert activate(w0, gpu_ids=("h100/0", "h100/1")).status == "applied"
    assert act(w0, ActivateModel(model="code", replica_id="code@h100/0", tp=2, gpu_ids=("h100/0", "h100/1")),
               seq=1).status == "applied"
    hooks.kernel.run()
    now = hooks.kernel.now_s
    for i in range(4):
        w0.submit(request(i, now, prompt=500, output=100))
        w0.submit(Request(10 + i, now, "code", "interactive", 500, 100))
    hooks.kernel.run()
    assert len(hooks.finished) == 8 and not hooks.dropped
    assert w1.pool.num_mirrored_pages == 0 and w1.status().member_of == ("chat@h100/0", "code@h100/0")


def test_offline_work_pauses_and_resumes_without_recompute() -> None:
    w, hooks, now = serving()
    w.submit(request(1, now, output=200, cls="batch"))
    hooks.kernel.run(until_s=now + 0.5)
    assert act(w, PreemptOffline(replica_id="chat@h100/0"), seq=1).status == "applied"
    (seq,) = w.scheduler.sequences()
    assert seq.status is SeqStatus.PAUSED_OFFLINE and seq.held
    hooks.kernel.run(until_s=now + 1.0)
    assert seq.num_generated < 200
    act(w, ResumeOffline(replica_id="chat@h100/0"), seq=2)
    hooks.kernel.run()
    assert hooks.finished == [seq] and seq.num_recomputed_tokens == 0 and seq.num_preemptions == 1


def test_offline_work_leaves_online_tpot_its_budget_and_without_harvesting_it_does_not() -> None:
    """60 batch requests decode when an interactive one (TPOT 100 ms) arrives: with harvesting (workers.harvest)
    the steady iteration is cut to half its TPOT (10 ms + 2 ms per sequence: 20 sequences); without, all 61 decode
    together at 132 ms per token."""
    tpots = {}
    for fraction in (0.5, None):
        (w, _), hooks = setup(scheduler=SchedulerConfig(harvest_fraction=fraction))
        activate(w)
        hooks.kernel.run()
        now = hooks.kernel.now_s
        for i in range(60):
            w.submit(request(i, now, prompt=20, output=400, cls="batch"))
        hooks.kernel.run(until_s=now + 2.0)
        w.submit(request(100, now + 2.0, prompt=20, output=50))
        hooks.kernel.run()
        (online,) = [s for s in hooks.finished if s.seq_id == 100]
        assert len(hooks.finished) == 61
        tpots[fraction] = online.tpot_s
    assert tpots[0.5] <= 0.05 + 0.005 and tpots[None] > 0.1


def test_swap_out_holds_requests_on_host_until_swapped_in() -> None:
    w, hooks, now = serving()
    w.submit(request(1, now, output=200))
    hooks.kernel.run(until_s=now + 0.5)
    out = act(w, SwapOutKV(replica_id="chat@h100/0", request_ids=(1,)), seq=1)
    assert out.status == "applied" and out.duration_s > 0
    hooks.kernel.run(until_s=now + 1.0)
    (seq,) = w.scheduler.sequences()
    assert seq.status is SeqStatus.SWAPPED and w.status().host_kv_pages_used >= 1
    act(w, SwapInKV(replica_id="chat@h100/0", request_ids=(1,)), seq=2)
    hooks.kernel.run()
    assert hooks.finished == [seq] and seq.num_recomputed_tokens == 0


def test_evictions_preempt_running_requests_by_id_group_or_class() -> None:
    w, hooks, now = serving()
    w.submit(request(1, now, output=200))
    w.submit(request(2, now, output=200, cls="batch"))
    hooks.kernel.run(until_s=now + 0.3)
    assert act(w, EvictRequests(replica_id="chat@h100/0"), seq=1).status == "failed"
    done = act(w, EvictRequests(replica_id="chat@h100/0", slo_classes=("batch",), mode=PreemptMode.RECOMPUTE),
               seq=2)
    assert done.status == "applied" and "1 running" in done.message
    assert w.scheduler.get(2).status is not SeqStatus.RUNNING and w.scheduler.get(1).status is SeqStatus.RUNNING
    assert act(w, SetQueueOrder(replica_id="chat@h100/0", policy="priority"), seq=3).status == "applied"
    hooks.kernel.run()
    assert len(hooks.finished) == 2


def test_migration_moves_queued_requests_to_another_replica() -> None:
    (w0, w1), hooks = setup()
    activate(w0)
    activate(w1, seq=1)
    hooks.kernel.run()
    now = hooks.kernel.now_s
    for i in range(4):
        w0.submit(request(i, now, output=100))
    assert act(w0, MigrateRequests(from_replica_id="chat@h100/0", to_replica_id="nope"), seq=2).status == "failed"
    moved = act(w0, MigrateRequests(from_replica_id="chat@h100/0", to_replica_id="chat@h100/1",
                                    include_running=True), seq=3)
    assert moved.status == "applied" and "4 requests" in moved.message
    hooks.kernel.run()
    assert len(hooks.finished) == 4 and w1.scheduler.num_sequences == 0 and w0.scheduler.num_sequences == 0


def test_reconfiguring_parallelism_moves_the_replica_to_a_new_group() -> None:
    (w0, w1), hooks = setup()
    activate(w0)
    hooks.kernel.run()
    result = act(w0, ReconfigureParallelism(replica_id="chat@h100/0", model="chat", tp=2,
                                            gpu_ids=("h100/0", "h100/1")), seq=1, revision=2)
    assert result.status == "applied"
    assert w0.replicas["chat@h100/0"].tp == 2 and w1.status().member_of == ("chat@h100/0",)


def test_a_failed_gpu_loses_its_work_and_comes_back_empty() -> None:
    (w, _), hooks = setup()
    activate(w)
    hooks.kernel.run()
    w.submit(request(1, hooks.kernel.now_s, output=500))
    hooks.kernel.run(until_s=hooks.kernel.now_s + 0.2)
    w.fail()
    assert not w.status().healthy and w.submit(request(2, hooks.kernel.now_s)).status == "rejected"
    assert [s.drop_reason for s in hooks.dropped] == ["no_router"]  # a lone worker has no router to re-route to
    assert activate(w, seq=5).status == "failed"
    hooks.kernel.run()  # the iteration in flight when it failed is ignored
    w.recover()
    assert w.status().healthy and activate(w, seq=6, revision=2).status == "applied"


def test_host_memory_comes_from_the_pool_and_evicts_the_least_recently_cached_weights() -> None:
    # 80 GiB per node of two GPUs: 40 GiB each, 10 for KV copies and 30 for weights — two 8B models, not three.
    models = [{"name": m, "arch": "Llama-3.1-8B", "tp_options": [1], "max_context_tokens": 8192} for m in "abc"]
    fleet = small_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2,
                                "host_memory_gib": 80}], models=models)
    hooks = LocalHooks()
    w = SimulatedWorker("h100/0", fleet, LatencyBook(), SimConfig(), hooks)
    assert w.pool.host_capacity_bytes == 10 * 2**30 and w.host_weights_gib == 30
    for n, m in enumerate("abc"):
        act(w, ActivateModel(model=m, replica_id=f"{m}@h100/0", gpu_ids=("h100/0",)), seq=2 * n)
        hooks.kernel.run()
        act(w, DeactivateModel(model=m, replica_id=f"{m}@h100/0", to=Residency.HOST), seq=2 * n + 1, revision=2)
    assert [r.model for r in w.status().replicas] == ["b", "c"]  # a's weights were evicted to make room for c's
    default = SimulatedWorker("h100/0", small_fleet(), LatencyBook(), SimConfig(), LocalHooks())
    assert default.host_weights_gib == 2 * 80 - 32  # twice the GPU's memory; KV copies get 32 GiB of it
