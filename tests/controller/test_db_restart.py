"""The database goes away under load and comes back: the API recovers without losing acknowledged telemetry.

PostgreSQL: every connection of the controller is terminated (`pg_terminate_backend`, by the application name the
test gives the controller's connections — other tests' connections are left alone) three times while a client
streams batches; requests caught mid-transaction answer 503 with a JSON body and are retried. SQLite: the
controller is stopped and a new one started on the same file while the client keeps sending.

Acknowledged means answered 201: those rows must all be in the database afterwards."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from controller.api.app import create_app
from db.engine import make_engine
from db.fleets import put_fleet
from db.models import RequestTelemetryRow
from tests.controller.conftest import FLEET, Api, closed_port, make_controller, serve, small_fleet
from tests.controller.telemetry import batch
from workers.agent import serve_in_thread

BATCH = 200


class Sender:
    """Sends batches with distinct request ids in a thread until stopped; keeps the acknowledged ids."""

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.secret = url, secret
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.refusals: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        first = 0
        while not self._stop.is_set():
            body = batch(BATCH, start_s=1000.0 + first, first_id=first, seed=first)
            self.sent.update(body["request_id"])
            while not self._stop.is_set():  # retry this batch until acknowledged
                try:
                    with httpx.Client(base_url=self.url, timeout=10,
                                      headers={"Authorization": f"Bearer {self.secret}"}) as c:
                        res = c.post(f"/v1/fleets/{FLEET}/telemetry", json=body)
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if res.status_code == 201:
                    self.acked.update(body["request_id"])
                    break
                self.refusals.append(res.status_code)
                assert res.headers["content-type"].startswith("application/json") and res.json()["error"]
                time.sleep(0.05)
            first += BATCH

    def set_url(self, url: str) -> None:
        self.url = url


def acks_again(sender: Sender, since: int, within_s: float = 15.0) -> bool:
    """Whether the sender gets acknowledgements beyond `since` within `within_s` (more than its client's 10 s
    timeout: a batch caught in flight when the server went away waits that long before it is sent again)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if len(sender.acked) > since:
            return True
        time.sleep(0.05)
    return False


def stored_ids(url: str) -> set[int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(select(RequestTelemetryRow.request_id)))
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(db_url: str) -> str:
    if make_url(db_url).get_backend_name() != "postgresql":
        pytest.skip("terminating backends needs PostgreSQL")
    return db_url


def test_postgres_backends_terminated_under_load(pg_url: str) -> None:
    app_name = f"fwtest-{uuid.uuid4().hex[:8]}"
    tagged = make_url(pg_url).update_query_dict({"application_name": app_name}).render_as_string(hide_password=False)
    ctl = make_controller(tagged)
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=small_fleet())
    api: Api = serve(ctl)
    sender = Sender(api.url, api.secrets["plan"]).start()
    killer = make_engine(pg_url)
    try:
        killed = 0
        for _ in range(3):
            time.sleep(0.7)
            with killer.begin() as conn:
                killed += conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                            "WHERE application_name = :name"), {"name": app_name}).scalar()
        time.sleep(0.7)
        assert acks_again(sender, len(sender.acked))  # it recovered and keeps acknowledging
    finally:
        sender.stop()
        killer.dispose()
    assert killed >= 3
    assert api.client(None).get("/readyz").status_code == 200
    stored = stored_ids(pg_url)
    assert sender.acked <= stored <= sender.sent
    assert all(code == 503 for code in sender.refusals)
    api.close()


def test_sqlite_controller_restarted_under_load(db_url: str) -> None:
    if make_url(db_url).get_backend_name() != "sqlite":
        pytest.skip("the file-restart case is SQLite's")
    ctl = make_controller(db_url)
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=small_fleet())
    api = serve(ctl)
    secret = api.secrets["plan"]
    sender = Sender(api.url, secret).start()
    try:
        time.sleep(1.0)
        api.close()  # the controller goes away mid-stream
        acked_while_down = len(sender.acked)
        restarted = make_controller(db_url)
        second = serve(restarted)
        second.secrets["plan"] = secret  # tokens live in the file: the old secret still works
        sender.set_url(second.url)
        assert acks_again(sender, acked_while_down)
    finally:
        sender.stop()
    stored = stored_ids(db_url)
    assert sender.acked <= stored <= sender.sent
    second.close()


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/missing-folder/fleetwise.db",
                                 "postgresql+psycopg://fleetwise:fleetwise@127.0.0.1:{port}/fleetwise"])
def test_an_unreachable_database_answers_503_with_a_json_body(url: str, tmp_path: Path) -> None:
    ctl = make_controller(url.format(tmp=tmp_path, port=closed_port()))
    agent = serve_in_thread(create_app(ctl))
    try:
        with httpx.Client(base_url=agent.url, headers={"Authorization": "Bearer fw_whatever"}) as c:
            res = c.get("/v1/fleets")
            assert res.status_code == 503 and res.headers["retry-after"] == "1"
            assert res.json()["error"] == "database_unavailable" and "retry" in res.json()["message"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
            assert c.get("/healthz").status_code == 200
    finally:
        agent.stop()
        ctl.close()
