"""Bad input found by probing a live server, each refused with a 4xx whose JSON body names the field, the value and
what is allowed — never a 500, never silent acceptance, nothing written: numbers JSON cannot carry (NaN,
Infinity), text it cannot (lone surrogates), bodies that cannot be read, ids past the database's integers, fleets
too large to list, YAML that expands without bound, concurrent writes of one fleet, what-if jobs the CLI would
refuse, a diff with nothing to compare with."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from core.fleet import MAX_FLEET_GPUS
from db.models import FleetVersionRow, ReplanRunRow, WhatIfRunRow
from tests.controller.conftest import FLEET, Api, small_fleet
from tests.controller.telemetry import batch
from tests.controller.test_api_input import assert_error, rows_stored
from tests.factories import EXAMPLES

JSON = {"content-type": "application/json"}


def count(api: Api, table: type) -> int:
    with api.ctl.sessions.begin() as s:
        return s.scalar(select(func.count()).select_from(table))


def post_raw(client: httpx.Client, url: str, body: object) -> httpx.Response:
    """`body` as Python's json writes it: NaN and ±Infinity as the bare words JSON lacks."""
    return client.post(url, content=json.dumps(body).encode(), headers=JSON)


def spec_with(change) -> dict:
    spec = small_fleet().model_dump(mode="json")
    change(spec["spec"])
    return spec


def whatif(**fields: object) -> dict:
    return {"fleet": str(EXAMPLES / "small-hetero.yaml"), "workload": str(EXAMPLES / "workloads" / "chat-mix.yaml"),
            "policies": ["dedicated"], "duration_s": 1.0, **fields}


@pytest.mark.parametrize(("scope", "url", "body", "status", "where", "value"), [
    ("admin", "/v1/fleets", {"spec": spec_with(lambda s: s["pools"][0].update(price_per_hour=float("inf")))},
     400, "spec.spec.pools[0].price_per_hour", "Infinity"),
    ("admin", "/v1/fleets", {"spec": spec_with(lambda s: s["pools"][0].update(count=float("nan")))},
     400, "spec.spec.pools[0].count", "NaN"),
    ("admin", "/v1/fleets", {"spec": spec_with(lambda s: s["slo_classes"][0].update(ttft_s=float("inf")))},
     400, "spec.spec.slo_classes[0].ttft_s", "Infinity"),
    ("plan", f"/v1/fleets/{FLEET}/telemetry", batch(5, start_s=0.0) | {"arrival_s": [float("nan")] * 5},
     422, "arrival_s", "NaN"),
    ("plan", f"/v1/fleets/{FLEET}/plans", {"budget_s": float("nan")}, 422, "budget_s", "NaN"),
    ("plan", "/v1/whatif", whatif(rate_scale=float("inf")), 422, "rate_scale", "Infinity"),
])
def test_nan_and_infinity_are_refused_naming_the_field(api: Api, scope: str, url: str, body: dict, status: int,
                                                       where: str, value: str) -> None:
    res = post_raw(api.client(scope), url, body)
    assert_error(res, status, where)
    assert res.json()["value"] == value
    assert (count(api, FleetVersionRow), rows_stored(api), count(api, ReplanRunRow), count(api, WhatIfRunRow)) == \
        (1, 0, 0, 0)


def test_infinity_in_a_yaml_fleet_is_refused(api: Api) -> None:
    text = yaml.safe_dump(small_fleet().model_dump(mode="json")).replace("price_per_hour: 4.5", "price_per_hour: .inf")
    body = assert_error(api.client("admin").put(f"/v1/fleets/{FLEET}", json={"yaml": text}), 400, "price_per_hour")
    assert body["value"] == "Infinity" and body["source"].startswith("body.yaml")
    assert count(api, FleetVersionRow) == 1


@pytest.mark.parametrize(("url", "raw", "where"), [
    ("/v1/fleets", b'{"yaml": "\\ud800"}', "body.yaml"),  # a lone surrogate: no UTF-8 for it
    ("/v1/fleets", b'{"spec": {"apiVersion": "\\udfff"}}', "spec.apiVersion"),
    ("/v1/fleets", b'{"spec": {"apiVersion": ' + b"[" * 900 + b"]" * 900 + b"}}", "spec.apiVersion"),
])
def test_values_json_cannot_echo_as_they_are_are_echoed_safely(api: Api, url: str, raw: bytes, where: str) -> None:
    res = api.client("admin").post(url, content=raw, headers=JSON)
    assert res.status_code in (400, 422), res.text
    assert_error(res, res.status_code, where)


@pytest.mark.parametrize(("raw", "headers", "where", "says"), [
    (b'{"yaml": "x",}', JSON, "body", "Expecting property name"),
    (b'{"yaml": "\xff\xfe"}', JSON, "body", "utf-8"),
    (b'{"spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, "body", "recursion"),
    (b'{"yaml": "x"}', {"content-type": "text/plain"}, "Content-Type", "application/json"),
])
def test_a_body_that_cannot_be_read_as_json_says_why(api: Api, raw: bytes, headers: dict, where: str,
                                                     says: str) -> None:
    body = assert_error(api.client("admin").post("/v1/fleets", content=raw, headers=headers), 422)
    assert body["where"] == where and says in body["message"] + body["allowed"], body


@pytest.mark.parametrize("ids", [[2**63, 1, 2, 3, 4], [1, 2, 3, 4, -1]])
def test_request_ids_must_fit_the_database(api: Api, ids: list[int]) -> None:
    body = batch(5, start_s=0.0) | {"request_id": ids}
    assert_error(api.client("plan").post(f"/v1/fleets/{FLEET}/telemetry", json=body), 422, "request_id")
    assert rows_stored(api) == 0


def test_a_request_that_finishes_before_it_arrives_is_refused_and_nothing_is_stored(api: Api) -> None:
    body = batch(5, start_s=1000.0)
    body["finish_s"] = [t + 2.0 for t in body["arrival_s"]]
    body["finish_s"][3] = body["arrival_s"][3] - 10.0
    error = assert_error(api.client("plan").post(f"/v1/fleets/{FLEET}/telemetry", json=body), 400, "finish_s")
    assert "(request_id 3) is before the request arrived" in error["message"]
    assert rows_stored(api) == 0


def test_a_fleet_too_large_to_list_is_refused(api: Api) -> None:
    def two_pools(spec: dict) -> None:  # each pool within bounds, the fleet one GPU past them
        spec["pools"] = [spec["pools"][0] | {"count": MAX_FLEET_GPUS}, spec["pools"][0] | {"name": "more", "count": 1}]

    body = assert_error(api.client("admin").put(f"/v1/fleets/{FLEET}", json={"spec": spec_with(two_pools)}), 400,
                        "spec.spec.pools[1].count")
    assert "1 is not allowed" in body["message"] and str(MAX_FLEET_GPUS) in body["allowed"]
    assert count(api, FleetVersionRow) == 1


# aliases of aliases: 1.2 million values in 200 bytes (just past the bound; each level more is 10 times as many)
LAUGHS = "\n".join([f"a0: &a0 [{', '.join('x' * 11)}]"] +
                   [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)])


@pytest.mark.parametrize(("text", "where", "value"), [
    ("a: &a [*a]\n", "line 1", "*a"),  # an alias inside its own anchor
    (LAUGHS, "line 6", None),
    ("apiVersion: fleetwise/v1\nkind: Fleet\nmetadata: {name: x}\nspec: " + "[" * 2000 + "]" * 2000, "line 4", 33),
])
def test_yaml_that_would_recurse_or_expand_without_end_is_refused(api: Api, text: str, where: str,
                                                                  value: object) -> None:
    c = api.client("admin")
    body = assert_error(c.post("/v1/fleets", json={"yaml": text}), 400, where)
    assert body["source"] == "body.yaml" and (value is None or body["value"] == value), body
    assert count(api, FleetVersionRow) == 1
    shared = small_fleet("aliased").model_dump(mode="json")  # aliases within bounds still serve
    shared["spec"]["models"][1]["tp_options"] = shared["spec"]["models"][0]["tp_options"]
    assert "*id001" in yaml.safe_dump(shared)
    assert c.post("/v1/fleets", json={"yaml": yaml.safe_dump(shared)}).status_code == 201


def test_concurrent_writes_of_one_fleet_conflict_instead_of_failing(api: Api) -> None:
    def put(name: str, i: int) -> httpx.Response:
        spec = small_fleet(name).model_dump(mode="json")
        spec["spec"]["pools"][0]["count"] = 1 + i  # every request a different spec: each would be a version
        return api.client("admin").put(f"/v1/fleets/{name}", json={"spec": spec})

    for attempt in range(3):
        name = f"raced-{attempt}"
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(put, [name] * 8, range(8)))
        assert {r.status_code for r in answers} <= {201, 409}, [r.text for r in answers]
        for refused in (r for r in answers if r.status_code == 409):
            assert_error(refused, 409, "metadata.name")
        versions = api.client("read").get(f"/v1/fleets/{name}/versions").json()
        assert len(versions) == sum(r.status_code == 201 for r in answers)


@pytest.mark.parametrize(("fields", "status", "where"), [
    ({"sweep": {"parameter": "colour", "values": [1.0]}}, 422, "sweep.parameter"),
    ({"sweep": {"parameter": "rate", "values": []}}, 422, "sweep.values"),
    ({"sweep": {"parameter": "rate", "values": [-1.0]}}, 422, "sweep.values"),
    ({"sweep": {"parameter": "rate", "values": [1.0] * 51}}, 422, "sweep.values"),
    ({"policies": ["dedicated", "dedicated"]}, 400, "policies"),
    ({"fleet": "/no/such/fleet.yaml"}, 400, "fleet"),
    ({"spot_start_s": 60.0}, 400, "spot_start_s"),  # small-hetero has no spot trace to start into
])
def test_whatif_jobs_the_cli_would_refuse_are_refused(api: Api, fields: dict, status: int, where: str) -> None:
    body = assert_error(api.client("plan").post("/v1/whatif", json=whatif(**fields)), status, where)
    assert not body["where"].startswith("--")
    assert count(api, WhatIfRunRow) == 0


def test_a_whatif_start_past_the_spot_trace_is_refused_before_queueing(api: Api, tmp_path) -> None:
    (tmp_path / "spot.csv").write_text("0,add,a\n0,add,b\n60000,remove,b\n")
    spec = yaml.safe_load((EXAMPLES / "small-hetero.yaml").read_text())
    spec["spec"]["pools"][0].update(spot=True, availability_trace="spot.csv")
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(spec))
    body = assert_error(api.client("plan").post("/v1/whatif", json=whatif(fleet=str(tmp_path / "fleet.yaml"),
                                                                          spot_start_s=120.0)), 400, "spot_start_s")
    assert "before the end of pool" in body["allowed"] and count(api, WhatIfRunRow) == 0


def test_a_diff_of_a_first_plan_names_the_parameter_to_give(api: Api) -> None:
    c = api.client("plan")
    plan_id = c.post(f"/v1/fleets/{FLEET}/plans", json={}).json()["plan_id"]
    body = assert_error(c.get(f"/v1/plans/{plan_id}/diff"), 404, "query.against")
    assert "against=" in body["allowed"]
