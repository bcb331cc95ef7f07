"""LocalWorkerClient: every action kind gets an answer; idempotency keys and revisions as core.actions says."""

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
    ResizeKV,
    ResumeOffline,
    SetQueueOrder,
    SetRouting,
    SwapInKV,
    SwapOutKV,
)
from core.catalog import GIB
from core.protocols import WorkerClient
from tests.workers.engines import make_engine, request
from workers.control import LocalWorkerClient

PAGE_GIB = 32 * 1024 / GIB  # make_engine's page size


def act(args, seq: int = 0, revision: int = 1, plan: str = "p1") -> Action:
    return Action(plan_id=plan, seq=seq, worker_id="local/0", args=args, revision=revision, reason="test")


@pytest.fixture
def client() -> LocalWorkerClient:
    return LocalWorkerClient(make_engine(activate=()), run_loop=False)


def test_it_is_a_worker_client_and_activation_reports_its_timing(client: LocalWorkerClient) -> None:
    assert isinstance(client, WorkerClient)
    result = client.apply(act(ActivateModel(model="a", replica_id="a-0", gpu_ids=("local/0",), kv_limit_gib=0.0)))
    assert result.status == "applied" and "from cold" in result.message and result.duration_s > 0
    replica = client.status().replicas[0]
    assert (replica.replica_id, replica.residency, replica.kv_limit_pages) == ("a-0", "active", 0)


def test_a_repeated_key_returns_the_first_result_and_changes_nothing(client: LocalWorkerClient) -> None:
    first = client.apply(act(ResizeKV(replica_id="a", kv_limit_gib=4 * PAGE_GIB), seq=3))
    client.apply(act(ResizeKV(replica_id="a", kv_limit_gib=8 * PAGE_GIB), seq=4, revision=2))
    again = client.apply(act(ResizeKV(replica_id="a", kv_limit_gib=4 * PAGE_GIB), seq=3))
    assert again == first
    assert client.engine.pool.limit_pages("a") == 8


def test_lower_revisions_are_stale_and_same_revision_changes_conflict(client: LocalWorkerClient) -> None:
    assert client.apply(act(ResizeKV(replica_id="a", kv_limit_gib=4 * PAGE_GIB), seq=0, revision=5)).ok
    stale = client.apply(act(ResizeKV(replica_id="a", kv_limit_gib=2 * PAGE_GIB), seq=1, revision=4))
    conflict = client.apply(act(ResizeKV(replica_id="a", kv_limit_gib=2 * PAGE_GIB), seq=2, revision=5))
    assert (stale.status, conflict.status) == ("stale", "conflict")
    assert stale.worker_revision == 5 and client.status().revision == 5
    assert client.engine.pool.limit_pages("a") == 4


def test_shrinking_below_use_is_deferred_and_completes_as_pages_free(client: LocalWorkerClient) -> None:
    engine = client.engine
    client.apply(act(ActivateModel(model="b", replica_id="b", gpu_ids=("local/0",))))
    for i in range(3):
        engine.submit(request(i, "b", prompt=40, output=30))
    for _ in range(3):
        engine.step()
    used = engine.pool.pages_used("b")
    result = client.apply(act(ResizeKV(replica_id="b", kv_limit_gib=PAGE_GIB), seq=1, revision=2))
    assert used > 1 and result.status == "deferred"
    assert client.status().replicas[0].limit_pending
    engine.run_until_idle()
    assert engine.pool.pages_used("b") == 0 and not engine.pool.limit_pending("b")


def test_request_actions_reach_the_scheduler(client: LocalWorkerClient) -> None:
    engine = client.engine
    client.apply(act(ActivateModel(model="a", replica_id="a", gpu_ids=("local/0",))))
    engine.submit(request(1, "a", "batch", output=40))
    engine.submit(request(2, "a", output=40))
    engine.step()
    assert client.apply(act(PreemptOffline(replica_id="a"), seq=1)).message.startswith("paused 1")
    assert client.status().replicas[0].num_offline_paused == 1
    assert "resumed 1" in client.apply(act(ResumeOffline(replica_id="a"), seq=2)).message
    assert "swapped out 1 of 1" in client.apply(act(SwapOutKV(replica_id="a", request_ids=(2,)), seq=3)).message
    assert client.apply(act(SwapInKV(replica_id="a", request_ids=(2,)), seq=4)).status == "applied"
    evict = client.apply(act(EvictRequests(replica_id="a", slo_classes=("batch",), mode=PreemptMode.SWAP), seq=5))
    assert evict.status == "applied" and "evicted" in evict.message
    order = client.apply(act(SetQueueOrder(replica_id="a", policy="edf"), seq=6))
    assert order.status == "applied" and engine.scheduler.queue_policy("a")[0] == "edf"
    engine.run_until_idle()
    assert engine.scheduler.num_sequences == 0


def test_actions_this_worker_cannot_do_fail_with_a_reason_never_raise(client: LocalWorkerClient) -> None:
    cases = [
        (SetRouting(model="a", weights={"a": 1.0}), "fleet router"),
        (MigrateRequests(from_replica_id="a", to_replica_id="x"), "executor"),
        (ReconfigureParallelism(replica_id="a", model="a", tp=2, gpu_ids=("local/0", "local/1")), "tp=1"),
        (ActivateModel(model="a", replica_id="a", tp=2, gpu_ids=("local/0", "local/1")), "tp=1"),
        (ActivateModel(model="zz", replica_id="z", gpu_ids=("local/0",)), "a model this worker serves"),
        (ResizeKV(replica_id="ghost", kv_limit_gib=1.0), "replica_id"),
    ]
    for i, (args, reason) in enumerate(cases):
        result = client.apply(act(args, seq=i))
        assert result.status == "failed" and reason in result.message, result
    other = Action(plan_id="p", seq=99, worker_id="h100/7", args=ResizeKV(replica_id="a", kv_limit_gib=1.0),
                   revision=1, reason="t")
    assert "not this worker" in client.apply(other).message


def test_deactivate_with_drain_is_deferred_until_requests_finish(client: LocalWorkerClient) -> None:
    client.apply(act(ActivateModel(model="a", replica_id="a", gpu_ids=("local/0",))))
    client.engine.submit(request(1, "a", output=4))
    result = client.apply(act(DeactivateModel(model="a", replica_id="a", to="cold"), seq=1, revision=2))
    assert result.status == "deferred"
    client.engine.run_until_idle()
    assert client.status().replicas[0].residency == "cold"


def test_a_submit_to_a_busy_engine_waits_at_most_an_iteration_or_two() -> None:
    """The stepping thread must not starve callers of the engine's lock (it is not fair): a submit made while the
    engine runs lets at most a couple of iterations pass before it gets in."""
    import threading
    import time

    engine = make_engine(activate=("a",))
    steps = 0
    inner = engine.step

    def counted():
        nonlocal steps
        out = inner()
        steps += out is not None
        return out

    engine.step = counted  # type: ignore[method-assign]
    client = LocalWorkerClient(engine)
    try:
        for i in range(4):  # keep it busy for a few hundred iterations
            engine.submit(request(100 + i, output=200))
        deadline = time.monotonic() + 30
        while steps < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        waited = []
        for i in range(30):
            before = steps
            engine.submit(request(i, output=1))
            waited.append(steps - before)
            time.sleep(0.002)
        # the OS may still schedule the waiter late on a loaded machine: a few outliers, never a starvation (without
        # the fix 81-164 iterations passed)
        assert threading.active_count() >= 2 and sum(w > 2 for w in waited) <= 3 and max(waited) <= 10, waited
    finally:
        client.close()
