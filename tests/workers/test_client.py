import socket

import httpx
import pytest

from core.actions import Action, ResizeKV
from core.protocols import WorkerClient
from workers.client import HttpWorkerClient


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_worker_raises_after_retrying() -> None:
    client = HttpWorkerClient(f"http://127.0.0.1:{_closed_port()}", worker_id="h100/0", attempts=2)
    assert isinstance(client, WorkerClient) and client.worker_id == "h100/0"
    action = Action(plan_id="p", seq=0, worker_id="h100/0", args=ResizeKV(replica_id="r", kv_limit_gib=1.0),
                    revision=1, reason="t")
    with pytest.raises(httpx.ConnectError):
        client.apply(action)
    with pytest.raises(httpx.ConnectError):
        client.status()


def test_local_client_is_exported_lazily() -> None:
    import workers.client
    from workers.control import LocalWorkerClient

    assert workers.client.LocalWorkerClient is LocalWorkerClient
