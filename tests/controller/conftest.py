"""Fixtures of the controller tests: a migrated database per backend (the db tests' fixtures: SQLite always,
PostgreSQL when FLEETWISE_TEST_POSTGRES_URL is set), a `Controller` on it, and the plan API served by a real uvicorn
on a loopback port chosen by the OS (port 0), with one token per scope."""

from __future__ import annotations

import itertools
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from controller.api.app import create_app
from controller.backends import BackendRegistry, FleetBackend
from controller.runtime import Controller
from controller.settings import load_settings
from core.clock import WallClock
from core.fleet import FleetSpec
from db.fleets import put_fleet
from db.tokens import create_token
from tests.db.conftest import db_url, migrated_url, pg_schemas  # noqa: F401 - fixtures shared with the db tests
from tests.factories import make_fleet
from workers.agent import RunningAgent, serve_in_thread

FLEET = "test"
_holders = itertools.count()


def small_fleet(name: str = FLEET, **labels: str) -> FleetSpec:
    """Four H100s (two nodes), two models, an online and an offline class."""
    spec = make_fleet(
        pools=[{"name": "h100", "gpu": "H100-SXM", "count": 4, "gpus_per_node": 2}],
        models=[{"name": "chat", "arch": "Llama-3.1-8B", "tp_options": [1], "max_context_tokens": 8192},
                {"name": "small", "arch": "Llama-3.2-1B", "tp_options": [1], "max_context_tokens": 8192}],
    )
    data = spec.model_dump(mode="json")
    data["metadata"] = {"name": name, "labels": labels}
    return type(spec).model_validate(data)


def make_controller(url: str, *, sim_fleets: tuple[str, ...] = (FLEET,), **settings: object) -> Controller:
    clock = WallClock()
    backends = BackendRegistry(clock, {f: FleetBackend(backend="sim") for f in sim_fleets})
    values = {"database_url": url, "policy": "dedicated", "plan_budget_s": 2.0, "forecast_interval_s": 60.0,
              "history_s": 3600.0, "num_scenarios": 8, "reduce_scenarios_to": 4,
              "holder": f"test-{uuid.uuid4().hex[:6]}-{next(_holders)}", **settings}
    return Controller(load_settings(**values), clock=clock, backends=backends)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Api:
    """A controller served over HTTP on loopback, with a token per scope."""

    ctl: Controller
    agent: RunningAgent
    secrets: dict[str, str]
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.agent.url

    def client(self, scope: str | None = "admin") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.secrets[scope]}"} if scope else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.agent.stop()
        self.ctl.close()


def serve(ctl: Controller) -> Api:
    secrets = {}
    with ctl.sessions.begin() as s:
        for scope in ("read", "plan", "admin"):
            _, secrets[scope] = create_token(s, name=f"{scope}-{uuid.uuid4().hex[:6]}", scopes=[scope])
    return Api(ctl, serve_in_thread(create_app(ctl)), secrets)


@pytest.fixture
def controller(db_url: str) -> Iterator[Controller]:  # noqa: F811 - the fixture imported above
    ctl = make_controller(db_url)
    yield ctl
    ctl.close()


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:  # noqa: F811
    """The API over a database holding fleet `test` (version 1, sim backend)."""
    ctl = make_controller(db_url)
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=small_fleet())
    served = serve(ctl)
    yield served
    served.close()
