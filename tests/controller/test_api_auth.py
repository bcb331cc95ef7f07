"""Authorization: every route but health needs a token; each route needs its scope (read < plan < admin); a read
token cannot apply a plan; unknown and revoked tokens are refused."""

from __future__ import annotations

import re

import pytest

from controller.api.app import create_app
from db.tokens import create_token, revoke_token
from tests.controller.conftest import FLEET, Api, make_controller

OPEN = {"/healthz", "/readyz"}
ADMIN_ROUTES = {("POST", "/v1/fleets"), ("PUT", "/v1/fleets/{name}"), ("PATCH", "/v1/fleets/{name}/settings")}
PARAMS = {"name": FLEET, "plan_id": "p-0", "version": "1", "forecast_id": "1", "cycle_id": "c", "run_id": "r"}


def routes(api: Api) -> list[tuple[str, str]]:
    """Every documented operation, and the OpenAPI document's own route."""
    paths = create_app(api.ctl).openapi()["paths"]
    return sorted([(m.upper(), p) for p, ops in paths.items() for m in ops] + [("GET", "/openapi.json")])


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path)


def needed_scope(method: str, path: str) -> str:
    if (method, path) in ADMIN_ROUTES:
        return "admin"
    return "read" if method == "GET" else "plan"


def test_every_route_but_health_needs_a_token_of_its_scope(api: Api) -> None:
    table = routes(api)
    assert len(table) >= 24
    anonymous, reader, planner = api.client(None), api.client("read"), api.client("plan")
    for method, path in table:
        url = concrete(path)
        if path in OPEN:
            assert anonymous.request(method, url).status_code in (200, 503)
            continue
        res = anonymous.request(method, url, json={})
        assert res.status_code == 401, (method, path, res.text)
        assert res.json()["error"] == "unauthenticated" and res.headers["www-authenticate"] == "Bearer"
        scope = needed_scope(method, path)
        for client, has in ((reader, "read"), (planner, "plan")):
            status = client.request(method, url, json={}).status_code
            allowed = ["read", "plan", "admin"].index(has) >= ["read", "plan", "admin"].index(scope)
            assert (status != 403) == allowed, (method, path, has, status)


def test_a_read_token_cannot_apply_a_plan(api: Api) -> None:
    plan_id = api.client("plan").post(f"/v1/fleets/{FLEET}/plans", json={}).json()["plan_id"]
    res = api.client("read").post(f"/v1/plans/{plan_id}/apply")
    assert res.status_code == 403
    assert res.json()["where"] == "Authorization" and "plan" in res.json()["message"]


@pytest.mark.parametrize("secret", ["fw_unknown", "x" * 500, "Bearer"])
def test_unknown_tokens_are_refused(api: Api, secret: str) -> None:
    res = api.client(None).get("/v1/fleets", headers={"Authorization": f"Bearer {secret}"})
    assert res.status_code == 401 and res.json()["error"] == "unauthenticated"


def test_a_revoked_token_stops_working(db_url: str) -> None:
    ctl = make_controller(db_url)
    try:
        with ctl.sessions.begin() as s:
            _, secret = create_token(s, name="soon-gone", scopes=["admin"])
            revoke_token(s, name="soon-gone")
        assert ctl.tokens.lookup(secret) is None
    finally:
        ctl.close()


def test_metrics_count_requests_with_bounded_labels(api: Api) -> None:
    c = api.client("read")
    c.get("/v1/fleets/nowhere")
    api.client(None).get("/v1/fleets")
    text = c.get("/metrics").text
    assert 'fleetwise_http_requests_total{method="GET",route="/v1/fleets/{name}",status="404"} 1.0' in text
    assert 'fleetwise_http_rejected_total{reason="unauthenticated"} 1.0' in text
    reasons = set(re.findall(r'fleetwise_http_rejected_total\{reason="(\w+)"\}', text))
    assert reasons == {"unauthenticated", "forbidden", "invalid", "not_found", "conflict", "too_large",
                       "database_unavailable"}


def test_a_method_a_path_does_not_serve_is_405_listing_every_method(api: Api) -> None:
    res = api.client("read").delete("/v1/fleets")
    assert res.status_code == 405 and res.headers["allow"] == "GET, POST"
    assert res.json()["allowed"] == "GET, POST" and res.json()["value"] == "DELETE"
