"""A test worker agent: a StateMachineTestWorker (or the fleet router) behind a real HTTP server, in its own process.

`python -m tests.executors.http_agent --worker-id h100/0 [--journal F] [--apply-delay-s 0.2] [--seed rid=model]`
serves GET /status, POST /apply, POST /submit, GET /received (every key received) on 127.0.0.1 (an OS-chosen port, printed as `LISTENING <port>`).
With `--router`, it serves a RoutingTable instead (GET /weights, POST /apply). Tests pause it with SIGSTOP (the
socket still accepts connections; nothing answers) and kill it with SIGKILL.

`AgentProcess` starts one and `HttpTestWorkerClient` / `HttpTestRouterClient` talk to it (WorkerClient / Router).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from core.actions import Action, ApplyResult
from core.requests import Request
from core.status import SubmitResult, WorkerStatus
from tests.executors.state_worker import StateMachineTestWorker, TestWorkerConfig

ROOT = Path(__file__).resolve().parents[2]


# -- the agent (server side) ------------------------------------------------------------------------------------


def _worker_app(worker: StateMachineTestWorker):
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/status")
    def status() -> dict:
        return worker.status().model_dump(mode="json")

    @app.post("/apply")
    def apply(action: dict) -> dict:
        return worker.apply(Action.model_validate(action)).model_dump(mode="json")

    @app.post("/submit")
    def submit(request: dict) -> dict:
        return worker.submit(Request(**request)).model_dump(mode="json")

    app.get("/received")(lambda: worker.received)

    return app


def _router_app(journal: Path | None):
    from fastapi import FastAPI

    from executors.routing import RoutingTable

    table, received, lock = RoutingTable(), [], threading.Lock()
    app = FastAPI()

    @app.post("/apply")
    def apply(action: dict) -> dict:
        parsed = Action.model_validate(action)
        with lock:
            fresh = parsed.idempotency_key not in received
            received.append(parsed.idempotency_key)
            result = table.apply(parsed)
            if fresh and result.status == "applied" and journal is not None:
                _append(journal, f"router {parsed.idempotency_key}")
        return result.model_dump(mode="json")

    app.get("/weights")(table.weights)
    app.get("/received")(lambda: received)
    return app


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--worker-id", default="router")
    parser.add_argument("--router", action="store_true")
    parser.add_argument("--journal", type=Path)
    parser.add_argument("--apply-delay-s", type=float, default=0.0)
    parser.add_argument("--memory-gib", type=float, default=200.0)
    parser.add_argument("--seed", action="append", default=[], help="replica_id=model, active from the start")
    args = parser.parse_args()
    if args.router:
        app = _router_app(args.journal)
    else:
        worker = StateMachineTestWorker(TestWorkerConfig(args.worker_id, memory_total_gib=args.memory_gib,
                                                         apply_delay_s=args.apply_delay_s, journal=args.journal))
        for item in args.seed:
            rid, model = item.split("=")
            worker.seed(rid, model, kv_limit_gib=20.0)
        app = _worker_app(worker)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # before announcing the port: connections made before uvicorn starts wait in the backlog
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


# -- the test side ----------------------------------------------------------------------------------------------


class AgentProcess:
    """One agent subprocess. `wait_ready()` returns its URL once it listens; kill it with `kill()`."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.executors.http_agent", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        self.url = ""

    def wait_ready(self) -> str:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("LISTENING "):
            self.kill()
            raise RuntimeError(f"test agent did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self.url

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
        self.proc.wait(timeout=10)



def start_agents(*arg_lists: tuple[str, ...]) -> list[AgentProcess]:
    """Start agents in parallel (each takes a second or two to import its libraries) and wait for all."""
    agents = [AgentProcess(*args) for args in arg_lists]
    try:
        for agent in agents:
            agent.wait_ready()
    except Exception:
        for agent in agents:
            agent.kill()
        raise
    return agents


class HttpTestWorkerClient:
    """WorkerClient over HTTP to a test agent. `apply`/`status` raise httpx errors when the agent is unreachable
    (connection refused, reset, or no answer within `timeout_s`)."""

    __test__ = False

    def __init__(self, base_url: str, worker_id: str, timeout_s: float = 30.0):
        self._worker_id = worker_id
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def status(self) -> WorkerStatus:
        return WorkerStatus.model_validate(self._ok(self.http.get("/status")).json())

    def apply(self, action: Action) -> ApplyResult:
        return ApplyResult.model_validate(self._ok(self.http.post("/apply", json=action.model_dump(mode="json"))).json())

    def submit(self, request: Request) -> SubmitResult:
        body = dataclasses.asdict(request)
        return SubmitResult.model_validate(self._ok(self.http.post("/submit", json=body)).json())

    @staticmethod
    def _ok(response: httpx.Response) -> httpx.Response:
        return response.raise_for_status()


class HttpTestRouterClient(HttpTestWorkerClient):
    """The Router protocol (apply, weights) over HTTP to an agent started with `--router`."""

    def __init__(self, base_url: str, timeout_s: float = 30.0):
        super().__init__(base_url, "router", timeout_s)

    def weights(self) -> dict[str, dict[str, float]]:
        return self._ok(self.http.get("/weights")).json()


def received_keys(*urls: str) -> list[str]:
    """Every key the agents at `urls` received, repeats included."""
    return [key for url in urls for key in httpx.get(f"{url}/received").json()]


def journal_keys(*paths: Path) -> list[str]:
    """Keys applied, as the agents journaled them (one line per first application)."""
    keys = []
    for path in paths:
        if path.exists():
            keys += [line.split()[1] for line in path.read_text().splitlines() if line.strip()]
    return keys


if __name__ == "__main__":
    main()
