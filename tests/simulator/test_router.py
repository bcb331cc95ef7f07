"""The router: smooth weighted round-robin over serving replicas, loading ones as a fallback, waiting and expiry."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from core.actions import Residency
from core.requests import Request
from simulator.router import Router


def replica(rid: str, *, loading: bool = False):
    worker = SimpleNamespace(healthy=True)
    rep = SimpleNamespace(replica_id=rid, residency=Residency.ACTIVE, draining=False,
                          activating_until_s=5.0 if loading else None)
    return worker, rep


def test_weights_are_honoured_exactly_and_loading_replicas_are_a_fallback() -> None:
    reps = {"a": replica("a"), "b": replica("b"), "c": replica("c", loading=True)}
    router = Router(10.0, reps.get)
    router.set_weights("m", {"a": 3.0, "b": 1.0, "c": 5.0})
    picks = [router.pick("m").replica_id for _ in range(8)]
    assert Counter(picks) == {"a": 6, "b": 2} and picks[:4] == ["a", "a", "b", "a"]
    reps["a"][1].draining = reps["b"][1].draining = True
    router.refresh("m")
    assert router.pick("m").replica_id == "c"  # only a loading replica left: requests wait there
    router.set_weights("m", {"a": 1.0})
    assert router.pick("m") is None


def test_waiting_requests_expire_after_the_timeout_in_arrival_order() -> None:
    router = Router(10.0, lambda rid: None)
    for i, t in enumerate([0.0, 4.0, 9.0]):
        router.wait("m", Request(i, t, "m", "c", 10, 10), t)
    assert [w.row for w in router.expired(12.0)] == [0]
    assert router.num_waiting("m") == 2 and [w.row for w in router.take_waiting("m")] == [1, 2]
