from core.actions import Residency
from core.state import FleetState, RequestGroup, RunningRequest
from core.status import ReplicaStatus, WorkerStatus
from optimizers.offline import plan_offline
from optimizers.placement.packing import PlacedReplica
from optimizers.plan import RunningReplica
from tests.factories import make_fleet

FLEET = make_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}])


def _replica(rid: str, gpu: str) -> tuple[RunningReplica, PlacedReplica]:
    return (RunningReplica(rid, "chat", "h100", "H100-SXM", 1, (gpu,), 20.0, 35.0),
            PlacedReplica(rid, "chat", "h100", "H100-SXM", 1, (gpu,), 20.0, 35.0, 0.5, 0))


def _worker(gpu: str, rid: str, paused: int) -> WorkerStatus:
    return WorkerStatus(worker_id=gpu, pool="h100", gpu_type="H100-SXM", time_s=0.0, memory_total_gib=80.0,
                        replicas=(ReplicaStatus(replica_id=rid, model="chat", residency=Residency.ACTIVE,
                                                gpu_ids=(gpu,), num_offline_paused=paused),))


def _waiting(rid: str) -> RequestGroup:
    """Interactive requests waiting on replica `rid`."""
    return RequestGroup(f"chat|interactive|0#{rid}", "chat", "interactive", 0.0, 3, 300, 0.0, 1.0, replica_id=rid)


def test_busy_replicas_pause_offline_work_and_idle_ones_resume_it() -> None:
    (run_a, tgt_a), (run_b, tgt_b) = _replica("a", "h100/0"), _replica("b", "h100/1")
    state = FleetState(time_s=0.0, workers=(_worker("h100/0", "a", 0), _worker("h100/1", "b", 4)),
                       groups=(_waiting("a"),), running=(RunningRequest(1, "a", "chat", "batch", 100, 5, 0.0),
                                RunningRequest(2, "a", "chat", "interactive", 100, 5, 0.0)))
    plan = plan_offline(state, FLEET, [run_a, run_b], [tgt_a, tgt_b], {"a": 9.5, "b": 2.0}, {"a": 10.0, "b": 10.0})
    assert not plan.first
    by_kind = {args.kind: (model, args, reason) for model, _, args, reason in plan.after}
    pause = by_kind["preempt_offline"][1]
    assert pause.replica_id == "a" and pause.request_ids == (1,)  # only the offline request
    resume = by_kind["resume_offline"][1]
    assert resume.replica_id == "b" and "4 paused" in by_kind["resume_offline"][2]


def test_nothing_to_do_when_online_load_is_moderate_and_online_requests_wait() -> None:
    run_a, tgt_a = _replica("a", "h100/0")
    state = FleetState(time_s=0.0, workers=(_worker("h100/0", "a", 2),), groups=(_waiting("a"),),
                       running=(RunningRequest(1, "a", "chat", "batch", 100, 5, 0.0),))
    plan = plan_offline(state, FLEET, [run_a], [tgt_a], {"a": 8.0}, {"a": 10.0})  # 80 %: neither busy nor spare
    assert not plan.first and not plan.after


def test_paused_work_resumes_once_no_online_request_waits_even_at_high_expected_load() -> None:
    run_a, tgt_a = _replica("a", "h100/0")
    state = FleetState(time_s=0.0, workers=(_worker("h100/0", "a", 2),),
                       running=(RunningRequest(1, "a", "chat", "batch", 100, 5, 0.0),))
    plan = plan_offline(state, FLEET, [run_a], [tgt_a], {"a": 9.5}, {"a": 10.0})  # busy, but nothing online waits
    assert [args.kind for _, _, args, _ in plan.after] == ["resume_offline"]
