"""Preemption notices through the API: a node agent forwards the provider's notice, the controller replans at once
and the plan leaves the GPU — on a fleet of simulated GPUs (the `sim` backend) served on loopback, both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from db.fleets import put_fleet
from tests.controller.conftest import FLEET, Api, make_controller, serve, small_fleet
from tests.controller.telemetry import batch


@pytest.fixture
def fleetwise_api(db_url: str) -> Iterator[Api]:
    ctl = make_controller(db_url, policy="fleetwise")
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=small_fleet())
    served = serve(ctl)
    yield served
    served.close()


def _gpus_in_use(c, plan_id: str) -> dict[str, list[str]]:
    plan = c.get(f"/v1/plans/{plan_id}").json()["plan"]
    out: dict[str, list[str]] = {}
    for r in plan["replicas"]:
        if r["residency"] == "active":
            for g in r["gpu_ids"]:
                out.setdefault(g, []).append(r["model"])
    return out


def test_a_notice_replans_at_once_and_the_gpu_stays_out_of_later_plans(fleetwise_api: Api) -> None:
    c = fleetwise_api.client("plan")
    now = fleetwise_api.ctl.clock.now()
    assert c.post(f"/v1/fleets/{FLEET}/telemetry", json=batch(2000, start_s=now - 600)).status_code == 201
    first = c.post(f"/v1/fleets/{FLEET}/plans", json={}).json()
    used = _gpus_in_use(c, first["plan_id"])
    assert first["outcome"] == "planned" and used
    leaving = min(used)

    res = c.post(f"/v1/fleets/{FLEET}/preemption-notices", json={"worker_id": leaving, "leaves_in_s": 30})
    assert res.status_code == 201, res.text
    cycle = res.json()
    assert cycle["trigger"] == "event:preemption_notice" and cycle["outcome"] == "planned" and cycle["executed"]
    after = _gpus_in_use(c, cycle["plan_id"])
    assert leaving not in after and after  # re-hosted elsewhere, not dropped
    assert {m for ms in after.values() for m in ms} >= set(used[leaving])
    actions = c.get(f"/v1/plans/{cycle['plan_id']}/actions").json()
    assert any(a["kind"] == "deactivate_model" and a["worker_id"] == leaving for a in actions)

    # The GPU still answers healthy (the provider has not taken it yet): the next cycle keeps it out all the same.
    later = c.post(f"/v1/fleets/{FLEET}/plans", json={}).json()
    assert leaving not in _gpus_in_use(c, later["plan_id"])
    metrics = c.get("/metrics").text
    assert "fleetwise_preemption_notices_total 1.0" in metrics


def test_a_bad_notice_names_the_field(fleetwise_api: Api) -> None:
    c = fleetwise_api.client("plan")
    res = c.post(f"/v1/fleets/{FLEET}/preemption-notices", json={"worker_id": "h100/9"})
    body = res.json()
    assert res.status_code == 400 and body["where"] == "worker_id" and "h100/0" in body["allowed"]
    res = c.post(f"/v1/fleets/{FLEET}/preemption-notices", json={"worker_id": "h100/0", "leaves_in_s": -1})
    assert res.status_code == 422 and "leaves_in_s" in res.text
    assert c.post("/v1/fleets/nowhere/preemption-notices", json={"worker_id": "h100/0"}).status_code == 404
    res = c.post(f"/v1/fleets/{FLEET}/preemption-notices", json={"worker_ids": ["h100/0", "gpu-9"]})
    assert res.status_code == 400 and res.json()["where"] == "worker_ids[1]" and res.json()["value"] == "gpu-9"
    for body in ({}, {"worker_id": "h100/0", "worker_ids": ["h100/1"]}, {"worker_ids": []}):
        res = c.post(f"/v1/fleets/{FLEET}/preemption-notices", json=body)
        assert res.status_code == 422 and "worker_id" in res.text, body
    assert not [x for x in c.get(f"/v1/fleets/{FLEET}/cycles").json() if x["trigger"] == "event:preemption_notice"]
    anonymous = fleetwise_api.client(None)
    assert anonymous.post(f"/v1/fleets/{FLEET}/preemption-notices", json={"worker_id": "h100/0"}).status_code == 401
    reader = fleetwise_api.client("read")
    assert reader.post(f"/v1/fleets/{FLEET}/preemption-notices", json={"worker_id": "h100/0"}).status_code == 403
