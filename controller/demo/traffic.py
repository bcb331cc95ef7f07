"""The demo's request path: a trace slice replayed on the demo clock, routed by the router's weights (which the
executor sets from each plan) to the replica's leader worker, and what happened to every request shipped to the
controller as telemetry through the REST API.

- `Replay` submits each request when the clock reaches its arrival: to a simulated GPU (`ClockedWorker.submit`) or
  to a local engine (`LocalWorkerClient.submit_with_handle`, whose handle tells how the request ended). A request
  whose model has no replica waits, as at the simulator's router (`simulator.router`), until one appears, and is
  dropped after `SimConfig.router_timeout_s` (`no_replica_timeout`); a worker that rejects it drops it at once.
- `Outcomes` gathers what ended: finished and dropped sequences of the simulated GPUs (simulated seconds) and ended
  handles of the engines (their own measured latencies, in real seconds: they are real hardware).
- `Shipper` posts what ended, as column batches, to `POST /v1/fleets/{name}/telemetry`, retrying until acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from controller.sim_fleet import ClockedSimFleet
from core.protocols import Clock
from core.requests import Request, RequestTable
from core.state import NO_REPLICA_TIMEOUT
from executors import RoutingTable, WorkerSet
from simulator.config import SimConfig
from workers.handles import REPLAY, RequestHandle
from workers.scheduler import Sequence

Row = dict[str, Any]
STATUS_REFRESH_S = 0.5  # wall seconds between refreshes of where each replica lives
SHIP_EVERY_S = 0.5


@dataclass
class Outcomes:
    """Rows of ended requests waiting to be shipped, and running totals for the live table."""

    rows: list[Row] = field(default_factory=list)
    sent: int = 0
    completed: int = 0
    dropped: int = 0
    met_slo: int = 0
    last_end_s: float = float("-inf")  # demo clock time the last ended request ended (finished or was dropped)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, row: Row, *, met: bool) -> None:
        with self.lock:
            self.rows.append(row)
            self.last_end_s = max(self.last_end_s, row["finish_s"] if row["finish_s"] is not None else -np.inf)
            self.completed += row["outcome"] == "completed"
            self.dropped += row["outcome"] == "dropped"
            self.met_slo += met

    def take(self) -> list[Row]:
        with self.lock:
            rows, self.rows = self.rows, []
        return rows

    @property
    def ended(self) -> int:
        return self.completed + self.dropped


class Replay:
    """Submits `table`'s requests on `clock` (see the module docstring). Run `run()` in a thread."""

    def __init__(self, table: RequestTable, clock: Clock, workers: WorkerSet, router: RoutingTable,
                 sim: ClockedSimFleet, slo_met: Callable[[str, float, float], bool], *, seed: int = 0) -> None:
        self.table, self.clock, self.workers, self.router, self.sim = table, clock, workers, router, sim
        self.slo_met = slo_met
        self.outcomes = Outcomes()
        self.rng = np.random.default_rng(seed)
        self.homes: dict[str, str] = {}  # replica id → leader worker
        self._homes_at = -np.inf
        self._handles: dict[int, tuple[Request, RequestHandle, str]] = {}
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        self.position = 0
        self.waiting: deque[Request] = deque()  # arrived while their model had no replica, oldest first
        self.router_timeout_s = SimConfig().router_timeout_s

    def run(self) -> None:
        for i in range(len(self.table)):
            if self.stopped.is_set():
                return
            request = self.table.request(i)
            self.clock.sleep_until(request.arrival_s)
            self._refresh_homes()
            self._send_waiting()
            self.outcomes.sent += 1
            if not self._route(request):
                self.waiting.append(request)
            self.position = i + 1
            self.collect()
        while self.waiting and not self.stopped.is_set():  # the last arrivals may still wait for a replica
            self.clock.sleep_until(self.clock.now() + 1.0)
            self._refresh_homes()
            self._send_waiting()
            self.collect()

    def _refresh_homes(self) -> None:
        now = time.monotonic()
        if now - self._homes_at < STATUS_REFRESH_S:
            return
        self._homes_at = now
        seen = self.workers.observe()
        self.homes = {r.replica_id: w.worker_id for w in seen.statuses for r in w.replicas}

    def _send_waiting(self) -> None:
        """Send the waiting requests whose model has a replica now; drop those that waited too long."""
        now = self.clock.now()
        for _ in range(len(self.waiting)):
            request = self.waiting.popleft()
            if now - request.arrival_s > self.router_timeout_s:
                self._drop(request, NO_REPLICA_TIMEOUT)
            elif not self._route(request):
                self.waiting.append(request)

    def _route(self, request: Request) -> bool:
        """Submit to a replica of the request's model by the router's weights; False when it has none."""
        shares = self.router.shares(request.model)
        replicas = [r for r in shares if r in self.homes]
        if not replicas:
            return False
        weights = np.array([shares[r] for r in replicas])
        replica = replicas[int(self.rng.choice(len(replicas), p=weights / weights.sum()))]
        client = self.workers.clients[self.homes[replica]]
        if hasattr(client, "submit_with_handle"):
            result, handle = client.submit_with_handle(request, REPLAY)
            if handle is not None:
                with self._lock:
                    self._handles[request.request_id] = (request, handle, client.worker_id)
        else:
            result = client.submit(request)
        if result.status == "rejected":
            self._drop(request, "rejected")
        return True

    def _drop(self, request: Request, reason: str) -> None:
        self.outcomes.add(_row(request, "dropped", finish_s=self.clock.now(), drop_reason=reason), met=False)

    def collect(self) -> None:
        """Move what ended (simulated sequences, engine handles) into `outcomes`."""
        self.sim.advance()
        done, dropped = self.sim.take_done()
        for seq in done:
            self._add_seq(seq, "completed")
        for seq in dropped:
            self._add_seq(seq, "dropped")
        with self._lock:
            ended = [k for k, (_, h, _) in self._handles.items() if h.done]
            finished = [self._handles.pop(k) for k in ended]
        for request, handle, worker in finished:
            self._add_handle(request, handle, worker)

    def in_flight(self) -> int:
        return self.outcomes.sent - self.outcomes.ended

    def _add_seq(self, seq: Sequence, outcome: str) -> None:
        ttft = None if seq.first_token_s is None else seq.first_token_s - seq.arrival_s
        tpot = None
        if outcome == "completed" and seq.first_token_s is not None and seq.finish_s is not None:
            tpot = (seq.finish_s - seq.first_token_s) / max(seq.num_generated - 1, 1)
        request = Request(request_id=seq.seq_id, arrival_s=seq.arrival_s, model=seq.model, slo_class=seq.slo_class,
                          prompt_tokens=seq.prompt_tokens, output_tokens=seq.max_output_tokens)
        finish = seq.finish_s if seq.finish_s is not None else self.clock.now()
        row = _row(request, outcome, ttft_s=ttft, tpot_s=tpot, finish_s=finish,
                   drop_reason=(seq.drop_reason or "dropped")[:60] if outcome == "dropped" else None)
        self.outcomes.add(row, met=outcome == "completed" and self.slo_met(seq.slo_class, ttft or 0.0, tpot or 0.0))

    def _add_handle(self, request: Request, handle: RequestHandle, worker: str) -> None:
        completed = handle.finish_reason in ("length", "stop")
        reason = None if completed else (handle.finish_reason or "dropped").split(":")[0][:60]
        row = _row(request, "completed" if completed else "dropped", ttft_s=handle.ttft_s, tpot_s=handle.tpot_s,
                   finish_s=self.clock.now(), drop_reason=reason, worker_id=worker)
        met = completed and self.slo_met(request.slo_class, handle.ttft_s or 0.0, handle.tpot_s or 0.0)
        self.outcomes.add(row, met=met)


def _row(request: Request, outcome: str, *, ttft_s: float | None = None, tpot_s: float | None = None,
         finish_s: float | None = None, drop_reason: str | None = None, worker_id: str | None = None) -> Row:
    e2e = None if finish_s is None or outcome != "completed" else max(finish_s - request.arrival_s, 0.0)
    return {"request_id": request.request_id, "model": request.model, "slo_class": request.slo_class,
            "arrival_s": request.arrival_s, "prompt_tokens": request.prompt_tokens,
            "output_tokens": request.output_tokens, "outcome": outcome, "ttft_s": ttft_s, "tpot_s": tpot_s,
            "e2e_s": e2e, "finish_s": finish_s, "drop_reason": drop_reason, "worker_id": worker_id}


class Shipper:
    """Posts ended requests to the controller's telemetry API every `SHIP_EVERY_S` (run `run()` in a thread)."""

    def __init__(self, base_url: str, secret: str, fleet: str, outcomes: Outcomes) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {secret}"})
        self.fleet, self.outcomes = fleet, outcomes
        self.acknowledged = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SHIP_EVERY_S):
            self.flush()
        self.flush()

    def flush(self) -> None:
        rows = self.outcomes.take()
        if rows:
            self.acknowledged += post_rows(self.http, self.fleet, rows)

    def close(self) -> None:
        self.http.close()


def post_rows(http: httpx.Client, fleet: str, rows: list[Row], *, attempts: int = 20) -> int:
    """Post `rows` as one column batch; retried on 503 and transport errors; returns the rows acknowledged."""
    body = {key: [r[key] for r in rows] for key in rows[0]}
    for attempt in range(attempts):
        try:
            res = http.post(f"/v1/fleets/{fleet}/telemetry", json=body)
        except httpx.TransportError:
            time.sleep(0.1 * (attempt + 1))
            continue
        if res.status_code == 201:
            return int(res.json()["rows"])
        if res.status_code != 503:
            raise RuntimeError(f"telemetry refused: HTTP {res.status_code}: {res.text[:300]}")
        time.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"telemetry not acknowledged after {attempts} attempts")
