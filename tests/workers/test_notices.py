"""The node-side notice watcher (`workers.notices`) against stand-ins for each cloud's instance metadata service —
which cannot run here: each fake serves the documented endpoint, headers and format on loopback — and a real
controller served on loopback, which replans when the notice arrives."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import PlainTextResponse

from db.fleets import put_fleet
from tests.cli import run_cli
from tests.controller.conftest import FLEET, Api, make_controller, serve, small_fleet
from tests.controller.telemetry import batch
from tests.db.conftest import db_url, migrated_url, pg_schemas  # noqa: F401 - fixtures of the controller API
from workers.agent import serve_in_thread
from workers.notices import NoticeWatcher


def fake_aws_metadata(state: dict) -> FastAPI:
    """IMDSv2: a token from PUT /latest/api/token, then spot/instance-action: 404 until an interruption is set."""
    app = FastAPI()

    @app.put("/latest/api/token", response_class=PlainTextResponse)
    def token(ttl: str = Header(alias="X-aws-ec2-metadata-token-ttl-seconds")) -> str:
        assert int(ttl) > 0
        return "imds-token"

    @app.get("/latest/meta-data/spot/instance-action")
    def instance_action(token: str | None = Header(default=None, alias="X-aws-ec2-metadata-token")) -> dict:
        if token != "imds-token":
            raise HTTPException(401)
        if state.get("action") is None:
            raise HTTPException(404)
        return {"action": state["action"], "time": state["time"]}

    return app


def fake_gcp_metadata(state: dict) -> FastAPI:
    app = FastAPI()

    def check(flavor: str | None) -> None:
        if flavor != "Google":
            raise HTTPException(403, "Missing Metadata-Flavor:Google header.")

    @app.get("/computeMetadata/v1/instance/preempted", response_class=PlainTextResponse)
    def preempted(flavor: str | None = Header(default=None, alias="Metadata-Flavor")) -> str:
        check(flavor)
        return "TRUE" if state.get("preempted") else "FALSE"

    @app.get("/computeMetadata/v1/instance/maintenance-event", response_class=PlainTextResponse)
    def maintenance(flavor: str | None = Header(default=None, alias="Metadata-Flavor")) -> str:
        check(flavor)
        return state.get("maintenance", "NONE")

    return app


def fake_azure_metadata(state: dict) -> FastAPI:
    app = FastAPI()

    @app.get("/metadata/scheduledevents")
    def scheduled(api_version: str = Query(alias="api-version"),
                  metadata: str | None = Header(default=None, alias="Metadata")) -> dict:
        if metadata != "true" or not api_version:
            raise HTTPException(400)
        return {"DocumentIncarnation": len(state.get("events", [])), "Events": state.get("events", [])}

    return app


FAKES = {"aws": fake_aws_metadata, "gcp": fake_gcp_metadata, "azure": fake_azure_metadata}


def announce(provider: str, state: dict, *, in_s: float = 120.0) -> None:
    """What each provider's metadata shows once it schedules this VM's interruption."""
    at = datetime.now(UTC) + timedelta(seconds=in_s)
    if provider == "aws":
        state |= {"action": "terminate", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
    elif provider == "gcp":
        state["preempted"] = True
    else:
        state["events"] = [
            {"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "EventType": "Freeze", "ResourceType":
             "VirtualMachine", "Resources": ["gpu-vm-1"], "EventStatus": "Scheduled", "NotBefore": ""},
            {"EventId": "f020ba2e-3bc0-4c40-a10b-86575a9eabd5", "EventType": "Preempt", "ResourceType":
             "VirtualMachine", "Resources": ["gpu-vm-1"], "EventStatus": "Scheduled",
             "NotBefore": format_datetime(at, usegmt=True)}]


@pytest.fixture
def fleetwise_api(db_url: str) -> Iterator[Api]:  # noqa: F811
    ctl = make_controller(db_url, policy="fleetwise")
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=small_fleet())
    served = serve(ctl)
    c = served.client("plan")
    assert c.post(f"/v1/fleets/{FLEET}/telemetry", json=batch(2000, start_s=ctl.clock.now() - 600)).status_code == 201
    assert c.post(f"/v1/fleets/{FLEET}/plans", json={}).status_code == 201
    yield served
    served.close()


def _notice_cycles(c) -> list[dict]:
    return [x for x in c.get(f"/v1/fleets/{FLEET}/cycles").json() if x["trigger"] == "event:preemption_notice"]


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_a_fake_metadata_notice_reaches_the_controller_once_for_all_gpus_of_the_vm(fleetwise_api: Api,
                                                                                    provider: str) -> None:
    state: dict = {}
    metadata = serve_in_thread(FAKES[provider](state))
    watcher = NoticeWatcher(provider, fleetwise_api.url, FLEET, ("h100/2", "h100/3"), fleetwise_api.secrets["plan"],
                            metadata_url=metadata.url, vm_name="gpu-vm-1" if provider == "azure" else None)
    c = fleetwise_api.client("read")
    try:
        assert watcher.poll() is None and not watcher.sent and not watcher.errors
        announce(provider, state)
        notice = watcher.poll()
        assert notice is not None and watcher.sent == [notice] and not watcher.errors, watcher.errors
        if provider == "gcp":
            assert notice.leaves_in_s == 30.0
        else:
            assert 100.0 < notice.leaves_in_s <= 120.0  # from the provider's time
        cycles = _notice_cycles(c)
        assert len(cycles) == 1 and cycles[0]["outcome"] in ("planned", "unchanged")  # one replan for the VM
        plan = c.get(f"/v1/plans/{cycles[0]['plan_id']}").json()["plan"]
        assert not {"h100/2", "h100/3"} & {g for r in plan["replicas"] for g in r["gpu_ids"]}
        assert watcher.poll().key == notice.key and len(_notice_cycles(c)) == 1  # forwarded once
    finally:
        watcher.close()
        metadata.stop()


def test_a_notice_the_controller_refuses_is_not_sent_again_and_a_metadata_failure_is_kept(fleetwise_api: Api) -> None:
    state: dict = {"preempted": True}
    metadata = serve_in_thread(fake_gcp_metadata(state))
    watcher = NoticeWatcher("gcp", fleetwise_api.url, FLEET, ("h100/9",), fleetwise_api.secrets["plan"],
                            metadata_url=metadata.url)
    try:
        notice = watcher.poll()
        assert notice is not None and watcher.sent == [notice]
        assert len(watcher.errors) == 1 and "HTTP 400" in watcher.errors[0] and "worker_id" in watcher.errors[0]
        watcher.poll()
        assert len(watcher.errors) == 1  # not posted again
    finally:
        watcher.close()
        metadata.stop()
    gone = NoticeWatcher("gcp", fleetwise_api.url, FLEET, ("h100/0",), "x", metadata_url=metadata.url, timeout_s=0.5)
    try:
        assert gone.poll() is None and gone.errors and gone.errors[0].startswith("metadata: ")
    finally:
        gone.close()


def test_the_cli_forwards_a_notice_once_and_names_a_missing_token(fleetwise_api: Api) -> None:
    metadata = serve_in_thread(fake_gcp_metadata({"preempted": True}))
    args = ("notices", "--provider", "gcp", "--controller", fleetwise_api.url, "--fleet", FLEET, "--worker-id",
            "h100/1", "--metadata-url", metadata.url, "--once")
    try:
        res = run_cli(*args, env={"FLEETWISE_TOKEN": fleetwise_api.secrets["plan"]})
        assert res.returncode == 0, res.stderr
        assert "forwarded gcp instance preempted for h100/1" in res.stdout
        assert len(_notice_cycles(fleetwise_api.client("read"))) == 1
        res = run_cli(*args, "--token-env", "NO_SUCH_TOKEN_VARIABLE")
        assert res.returncode == 2 and "NO_SUCH_TOKEN_VARIABLE is not set" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        metadata.stop()
