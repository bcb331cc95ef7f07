"""Fleets and telemetry through the API, and bad input: malformed JSON, wrong types, unknown fleets, oversized
batches, bad specs — each a 4xx whose JSON body names the problem, with nothing half-written in the database."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from controller.fleet_settings import POLICY_LABEL
from db.models import FleetVersionRow, RequestTelemetryRow
from tests.controller.conftest import FLEET, Api, small_fleet
from tests.controller.telemetry import batch
from tests.factories import EXAMPLES

ERROR_KEYS = {"error", "where", "value", "allowed", "message"}


def rows_stored(api: Api) -> int:
    with api.ctl.sessions.begin() as s:
        return s.scalar(select(func.count()).select_from(RequestTelemetryRow))


def assert_error(res: httpx.Response, status: int, where: str | None = None) -> dict:
    assert res.status_code == status, res.text
    body = res.json()
    assert ERROR_KEYS <= set(body) and body["message"]
    if where is not None:
        assert where in (body["where"] or ""), body
    return body


def test_fleets_from_yaml_and_json_with_versions(api: Api) -> None:
    c = api.client("admin")
    text = (EXAMPLES / "small-hetero.yaml").read_text()
    created = c.post("/v1/fleets", json={"yaml": text})
    assert created.status_code == 201 and created.json()["version"] == 1 and created.json()["num_gpus"] == 12
    assert c.post("/v1/fleets", json={"spec": yaml.safe_load(text)}).status_code == 200  # same spec: unchanged
    changed = yaml.safe_load(text)
    changed["spec"]["pools"][2]["count"] = 2
    assert c.put("/v1/fleets/small-hetero", json={"spec": changed}).json()["version"] == 2
    versions = c.get("/v1/fleets/small-hetero/versions").json()
    assert [v["version"] for v in versions] == [1, 2] and versions[0]["spec_sha256"] != versions[1]["spec_sha256"]
    assert c.get("/v1/fleets/small-hetero/versions/1").json()["spec"]["spec"]["pools"][2]["count"] == 4
    assert {f["name"] for f in c.get("/v1/fleets").json()} == {FLEET, "small-hetero"}
    settings = c.patch("/v1/fleets/small-hetero/settings", json={"policy": "qlm"}).json()
    assert settings["policy"] == "qlm" and settings["version"] == 3
    assert settings["spec"]["metadata"]["labels"][POLICY_LABEL] == "qlm"


@pytest.mark.parametrize(("body", "status", "where"), [
    ({"yaml": "apiVersion: fleetwise/v1\nkind: Fleet\nmetadata: {name: x}\nspec: {pools: []}\n"}, 400, "spec.pools"),
    ({"spec": {"apiVersion": "fleetwise/v1", "kind": "Fleet", "metadata": {"name": "x"},
               "spec": {"pools": [{"name": "a", "gpu": "H100-SXM", "count": -1}]}}}, 400, "spec.spec.pools"),
    ({"yaml": "x: [1"}, 400, "line 1"),
    ({"yaml": "a", "spec": {}}, 422, "body"),
    ({}, 422, "body"),
    ({"spec": "not an object"}, 422, "body.spec"),
])
def test_bad_fleet_specs_name_the_field_and_store_nothing(api: Api, body: dict, status: int, where: str) -> None:
    assert_error(api.client("admin").post("/v1/fleets", json=body), status, where)
    with api.ctl.sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(FleetVersionRow)) == 1


def test_fleet_name_must_match_the_path_and_labels_must_be_usable(api: Api) -> None:
    c = api.client("admin")
    spec = small_fleet().model_dump(mode="json")
    assert_error(c.put("/v1/fleets/other", json={"spec": spec}), 400, "metadata.name")
    spec["metadata"]["labels"] = {"fleetwise/advisory": "maybe"}
    body = assert_error(c.put(f"/v1/fleets/{FLEET}", json={"spec": spec}), 400, "fleetwise/advisory")
    assert body["value"] == "maybe"
    spec["metadata"]["labels"] = {"fleetwise/advisroy": "true", "team": "search"}  # misspelt: not ignored
    body = assert_error(c.put(f"/v1/fleets/{FLEET}", json={"spec": spec}), 400, "fleetwise/advisroy")
    assert "fleetwise/advisory" in body["allowed"]
    assert_error(c.patch(f"/v1/fleets/{FLEET}/settings", json={"policy": "nope"}), 422, "policy")
    assert_error(c.get("/v1/fleets/missing"), 404, "fleet")


def test_telemetry_is_stored_whole_and_acknowledged(api: Api) -> None:
    c = api.client("plan")
    res = c.post(f"/v1/fleets/{FLEET}/telemetry", json=batch(500, start_s=1000.0))
    assert res.status_code == 201 and res.json() == {"fleet": FLEET, "rows": 500}
    arrivals = c.post(f"/v1/fleets/{FLEET}/telemetry", json=batch(20, start_s=1000.0, first_id=500, outcomes=False))
    assert arrivals.json()["rows"] == 20
    assert rows_stored(api) == 520


@pytest.mark.parametrize(("change", "status", "where"), [
    (lambda b: b.update(model=["nope"] * len(b["model"])), 400, "model"),
    (lambda b: b.update(slo_class=["gold"] * len(b["model"])), 400, "slo_class"),
    (lambda b: b["prompt_tokens"].pop(), 422, "body"),
    (lambda b: b.update(prompt_tokens=["many"] * len(b["model"])), 422, "prompt_tokens"),
    (lambda b: b["ttft_s"].__setitem__(3, -1.0), 422, "ttft_s"),
    (lambda b: b["outcome"].__setitem__(0, "exploded"), 422, "outcome"),
    (lambda b: b.update(colour=["red"]), 422, "colour"),
    (lambda b: b.pop("outcome"), 400, "outcome"),
])
def test_bad_telemetry_is_refused_whole(api: Api, change: Callable[[dict], object], status: int, where: str,
                                        ) -> None:
    body = batch(50, start_s=0.0)
    change(body)
    assert_error(api.client("plan").post(f"/v1/fleets/{FLEET}/telemetry", json=body), status, where)
    assert rows_stored(api) == 0


def test_malformed_json_unknown_fleet_and_oversized_batches(api: Api) -> None:
    c = api.client("plan")
    url = f"/v1/fleets/{FLEET}/telemetry"
    assert_error(c.post(url, content=b'{"request_id": [1,', headers={"content-type": "application/json"}), 422)
    assert_error(c.post("/v1/fleets/nowhere/telemetry", json=batch(5, start_s=0.0)), 404, "fleet")
    limit = api.ctl.settings.max_batch_rows
    big = {k: v * (limit // 50 + 1) for k, v in batch(50, start_s=0.0).items()}
    body = assert_error(c.post(url, json=big), 413, "request_id")
    assert body["value"] > limit and str(limit) in body["allowed"]
    huge = b'{"request_id": [' + b"1," * (api.ctl.settings.max_body_bytes // 2) + b"1]}"
    assert_error(c.post(url, content=huge, headers={"content-type": "application/json"}), 413, "body")

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"request_id": ['
        for _ in range(api.ctl.settings.max_body_bytes // 65536 + 2):
            yield b"1," * 32768
        yield b"1]}"
    assert_error(c.post(url, content=chunks(), headers={"content-type": "application/json"}), 413, "body")
    assert rows_stored(api) == 0
    assert json.loads(c.get("/v1/fleets/nowhere/plans").text)["error"] == "not_found"
