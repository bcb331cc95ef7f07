"""Plans through the API: plan now, list, get, diff, actions, apply, advisory mode and approval, a fleet changed
since, predicted versus observed — on a fleet of simulated GPUs (the `sim` backend), on both databases."""

from __future__ import annotations

import time

import httpx

from controller.api.plan_views import plan_document, summary
from controller.api.schemas import PlanPublic
from controller.fleet_settings import ADVISORY_LABEL
from db.plans import get_plan
from tests.controller.conftest import FLEET, Api, small_fleet
from tests.controller.telemetry import batch


def wait_status(client: httpx.Client, plan_id: str, wanted: set[str], timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/plans/{plan_id}").json()
        if body["status"] in wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"plan {plan_id} stayed {body['status']}")


def plan_now(client: httpx.Client, **body: object) -> dict:
    res = client.post(f"/v1/fleets/{FLEET}/plans", json=body)
    assert res.status_code == 201, res.text
    return res.json()


def test_plan_now_executes_on_the_workers_and_records_the_cycle(api: Api) -> None:
    c = api.client("plan")
    now = api.ctl.clock.now()
    assert c.post(f"/v1/fleets/{FLEET}/telemetry", json=batch(400, start_s=now - 600)).status_code == 201
    cycle = plan_now(c)
    assert cycle["outcome"] == "planned" and cycle["executed"] and cycle["error"] is None
    assert set(cycle["timings_s"]) == {"observe", "forecast", "plan", "store", "execute"}
    assert len(cycle["forecast_ids"]) == 2  # one per model
    plan = c.get(f"/v1/plans/{cycle['plan_id']}").json()
    assert plan["status"] == "applied" and plan["plan"]["actions"]
    actions = c.get(f"/v1/plans/{cycle['plan_id']}/actions").json()
    assert actions and all(a["status"] == "applied" for a in actions)
    workers = c.get(f"/v1/fleets/{FLEET}/workers").json()
    assert workers["source"] == "live"
    active = {r["model"] for w in workers["workers"] for r in w["replicas"] if r["residency"] == "active"}
    assert active == {"chat", "small"}
    cycles = c.get(f"/v1/fleets/{FLEET}/cycles").json()
    assert [x["cycle_id"] for x in cycles] == [cycle["cycle_id"]] and cycles[0]["outcome"] == "planned"
    assert cycles[0]["inputs_digest"] == plan["plan"]["input_digest"] and cycles[0]["finished_at"]
    forecast = c.get(f"/v1/forecasts/{cycle['forecast_ids'][0]}").json()
    assert forecast["series"] in ("chat", "small") and len(forecast["mean"]) == api.ctl.settings.forecast_horizon


def test_second_plan_diffs_against_its_parent_and_supersedes_it(api: Api) -> None:
    c = api.client("plan")
    first = plan_now(c)["plan_id"]
    second = plan_now(c, policy="muxserve")["plan_id"]
    listed = c.get(f"/v1/fleets/{FLEET}/plans").json()
    assert [p["plan_id"] for p in listed] == [second, first]
    assert listed[1]["status"] == "superseded" and listed[0]["status"] == "applied"
    assert listed[0]["generation"] == listed[1]["generation"] + 1
    diff = c.get(f"/v1/plans/{second}/diff").json()
    assert diff["against"] == first and diff["gpus_before"] >= 1
    against = c.get(f"/v1/plans/{first}/diff", params={"against": second}).json()
    assert len(against["replicas_added"]) == len(diff["replicas_removed"])


def test_advisory_plans_wait_for_approval(api: Api) -> None:
    admin, c = api.client("admin"), api.client("plan")
    assert admin.patch(f"/v1/fleets/{FLEET}/settings", json={"advisory": True}).json()["advisory"] is True
    cycle = plan_now(c)
    assert cycle["advisory"] and not cycle["executed"]
    pid = cycle["plan_id"]
    assert c.get(f"/v1/plans/{pid}").json()["status"] == "proposed"
    refused = c.post(f"/v1/plans/{pid}/apply")
    assert refused.status_code == 409 and refused.json()["error"] == "conflict" and "approve" in refused.json()["allowed"]
    assert all(a["status"] == "pending" for a in c.get(f"/v1/plans/{pid}/actions").json())
    assert c.post(f"/v1/plans/{pid}/approve").json()["status"] == "approved"
    assert c.post(f"/v1/plans/{pid}/apply").status_code == 202
    assert wait_status(c, pid, {"applied", "failed"})["status"] == "applied"
    assert all(a["status"] == "applied" for a in c.get(f"/v1/plans/{pid}/actions").json())
    again = c.post(f"/v1/plans/{pid}/apply")
    assert again.status_code == 409 and again.json()["where"] == "status"


def test_a_plan_for_a_fleet_that_changed_since_is_refused(api: Api) -> None:
    admin, c = api.client("admin"), api.client("plan")
    admin.patch(f"/v1/fleets/{FLEET}/settings", json={"advisory": True})  # version 2
    pid = plan_now(c, fleet_version=2)["plan_id"]
    changed = small_fleet(**{ADVISORY_LABEL: "true"}).model_dump(mode="json")
    changed["spec"]["pools"][0]["count"] = 2
    assert admin.put(f"/v1/fleets/{FLEET}", json={"spec": changed}).json()["version"] == 3
    for route in ("approve", "apply"):
        res = c.post(f"/v1/plans/{pid}/{route}")
        assert res.status_code == 409, res.text
        body = res.json()
        assert body["where"] == "fleet_version" and body["value"] == 2 and "changed since" in body["message"]
    assert c.get(f"/v1/plans/{pid}").json()["status"] == "proposed"  # nothing written
    stale = c.post(f"/v1/fleets/{FLEET}/plans", json={"fleet_version": 2})
    assert stale.status_code == 409 and stale.json()["where"] == "fleet_version"


def test_predicted_versus_observed_joins_the_telemetry_that_followed(api: Api) -> None:
    c = api.client("plan")
    pid = plan_now(c)["plan_id"]
    start = api.ctl.clock.now()
    assert c.post(f"/v1/fleets/{FLEET}/telemetry", json=batch(200, start_s=start, span_s=0.5)).status_code == 201
    time.sleep(0.6)
    body = c.get(f"/v1/plans/{pid}/outcome").json()
    observed = body["observed"]
    assert observed["num_requests"] == 200 and observed["completed"] == 200
    assert 0 < observed["slo_attainment"] < 1 and set(observed["per_class"]) == {"interactive", "batch"}
    assert observed["per_class"]["batch"] == 1.0  # offline requests attain when they complete
    assert observed["gpu_hours"] > 0 and observed["cost_usd"] > 0 and body["observed_cost_usd_per_hour"] > 0
    assert body["window_end_s"] > body["window_start_s"]


def test_the_plan_document_is_the_documented_model(api: Api) -> None:
    c = api.client("plan")
    pid = plan_now(c)["plan_id"]
    served = c.get(f"/v1/plans/{pid}").json()
    with api.ctl.sessions.begin() as s:
        row = get_plan(s, plan_id=pid)
        validated = summary(row, full=True).model_dump(mode="json")
        assert plan_document(row) == validated
    assert PlanPublic.model_validate(served).model_dump(mode="json") == validated
