"""The observe stage: requests the router dropped for want of a replica become `request_for_inactive_model`."""

from __future__ import annotations

import numpy as np

from controller.replan.observe import _unserved_models, observed_lengths
from core.actions import Residency
from core.requests import RequestTable
from core.state import EventKind
from core.status import ReplicaStatus, WorkerStatus
from db.telemetry import RequestOutcomes


def _status(*replicas: tuple[str, bool]) -> WorkerStatus:
    return WorkerStatus(
        worker_id="g0", pool="p", gpu_type="L4", healthy=True, time_s=100.0, memory_total_gib=24.0,
        kv_pages_total=100, kv_pages_used=0,
        replicas=tuple(ReplicaStatus(replica_id=f"{m}@g0", model=m, residency=Residency.ACTIVE, draining=d)
                       for m, d in replicas))


def test_drops_without_a_replica_in_the_window_ask_for_models_no_worker_runs() -> None:
    models = ("a", "b", "c", "d")
    table = RequestTable.from_columns(
        arrival_s=np.array([10.0, 50.0, 60.0, 70.0, 80.0, 90.0]), model_idx=np.array([0, 0, 1, 2, 3, 3]),
        slo_idx=np.zeros(6, int), prompt_tokens=np.full(6, 10), output_tokens=np.full(6, 5),
        model_names=models, slo_names=("interactive",))
    outcomes = RequestOutcomes.from_columns(
        outcome=["dropped", "dropped", "dropped", "dropped", "completed", "dropped"],
        drop_reason=["no_replica", "no_replica_timeout", "no_replica", "rejected", None, "no_replica"])
    # a: dropped in the window, not running → asked; b: dropped but running (not draining) → not asked;
    # c: dropped for another reason → not asked; d: running but draining → asked. The drop at 10 s is too old.
    events = _unserved_models(table, outcomes, [_status(("b", False), ("d", True))], now=100.0, window_s=60.0)
    assert [(e.kind, e.model) for e in events] == [(EventKind.REQUEST_FOR_INACTIVE_MODEL, "a"),
                                                   (EventKind.REQUEST_FOR_INACTIVE_MODEL, "d")]
    assert events[0].detail.startswith("1 request(s)")


def test_no_drops_no_events() -> None:
    table = RequestTable.from_columns(
        arrival_s=np.array([90.0]), model_idx=np.array([0]), slo_idx=np.array([0]), prompt_tokens=np.array([10]),
        output_tokens=np.array([5]), model_names=("a",), slo_names=("interactive",))
    outcomes = RequestOutcomes.from_columns(outcome=["completed"])
    assert _unserved_models(table, outcomes, [], now=100.0, window_s=60.0) == []


def test_observed_lengths_learn_from_completed_and_imported_requests_only() -> None:
    table = RequestTable.from_columns(
        arrival_s=np.arange(4.0), model_idx=np.zeros(4, int), slo_idx=np.zeros(4, int),
        prompt_tokens=np.full(4, 10), output_tokens=np.array([100, 300, 9000, 200]), model_names=("a",),
        slo_names=("interactive",))
    outcomes = RequestOutcomes.from_columns(outcome=["completed", "unknown", "dropped", "cancelled"])
    lengths = observed_lengths(table, outcomes)
    assert lengths is not None
    assert lengths("a", "interactive", 2, 20) == (400.0, 2 * 100.0**2)  # 100 and 300: mean 200, variance 10,000
    none_known = RequestOutcomes.from_columns(outcome=["dropped", "rejected", "dropped", "cancelled"])
    assert observed_lengths(table, none_known) is None
    assert observed_lengths(table.take(np.zeros(4, bool)), RequestOutcomes.from_columns(outcome=[])) is None
