"""Schemathesis against the OpenAPI document, on a real uvicorn server on loopback: on every operation, generated
inputs (valid and invalid) never cause a 5xx, and every answer conforms to the document (status codes, content
types, bodies — refusals included). A bounded number of examples per operation keeps it inside the test budget."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from controller.api.app import create_app
from controller.runtime import Controller
from controller.settings import load_settings
from db.fleets import put_fleet
from db.models import ApiTokenRow
from db.tokens import hash_secret
from tests.controller.conftest import Api, make_controller, serve, small_fleet

EXAMPLES_PER_OPERATION = 5


def _document() -> dict:
    ctl = Controller(load_settings(database_url="sqlite:///:memory:"))  # only to build the routes; never queried
    try:
        return create_app(ctl).openapi()
    finally:
        ctl.close()


schema = schemathesis.openapi.from_dict(_document())
# Methods a path does not serve are answered 405 by the router (with every method the document lists for the
# path: errors.allowed_methods), the same for every path; the budget goes to each operation's own inputs instead:
# the coverage phase's systematic edge and negative cases plus a few random examples.
schema.config.phases.coverage.unexpected_methods = set()
# Schemathesis applies auth while collecting, before any fixture runs: the secret is made here, and the server
# fixture stores its hash as an admin token (as `fleetwise token create` would).
ADMIN_SECRET = "fw_" + secrets.token_urlsafe(32)


@schema.auth()
class AdminToken:
    """Schemathesis applies the token itself, so that its own cases without credentials stay without them."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return ADMIN_SECRET

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def shared_api(migrated_url: str) -> Iterator[tuple[Api, requests.Session]]:
    """One server per backend for the whole module (generated requests change little worth isolating)."""
    ctl = make_controller(migrated_url)
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=small_fleet())
    served = serve(ctl)
    with ctl.sessions.begin() as s:
        s.add(ApiTokenRow(name="schemathesis", secret_sha256=hash_secret(ADMIN_SECRET), scopes=["admin"]))
    session = requests.Session()
    yield served, session
    session.close()
    served.close()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_never_fail_the_server(case: schemathesis.Case, shared_api: tuple[Api, requests.Session],
                                                 ) -> None:
    api, session = shared_api
    response = case.call(base_url=api.url, session=session)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
    # Schema-valid bodies may still be refused with 400: a fleet spec travels as an opaque object whose rules (models
    # that fit, classes that exist) are checked by the controller, and telemetry must name the fleet's models.
    case.validate_response(response, additional_checks=[not_a_server_error], excluded_checks=[positive_data_acceptance])
