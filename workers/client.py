"""`HttpWorkerClient`: the `core.protocols.WorkerClient` of a worker agent, over HTTP (httpx).

Transport failures are retried with exponential backoff (tenacity): `status` and `apply` on any transport error —
`apply` is idempotent on its key, so a re-send after a lost answer is safe — and `submit` only when the connection
could not be made (a lost answer to a submit must not queue the request twice). After the retries `apply` raises,
as the protocol says ("raises only when the worker is unreachable"); an agent that answers 4xx to an action yields a
`failed` result carrying the agent's message.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Self

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from core.actions import Action, ApplyResult
from core.requests import Request
from core.status import SubmitResult, WorkerStatus

_BACKOFF = wait_exponential(multiplier=0.1, max=2.0)


class HttpWorkerClient:
    """WorkerClient for the agent at `base_url` (e.g. `http://10.0.0.5:8100`)."""

    def __init__(self, base_url: str, *, worker_id: str | None = None, timeout_s: float = 30.0,
                 attempts: int = 4) -> None:
        self.base_url = base_url.rstrip("/")
        self._worker_id = worker_id
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._attempts = attempts

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def worker_id(self) -> str:
        if self._worker_id is None:
            self._worker_id = self.status().worker_id
        return self._worker_id

    def status(self) -> WorkerStatus:
        response = self._send("GET", "/v1/worker/status", retry_on=httpx.TransportError)
        response.raise_for_status()
        return WorkerStatus.model_validate(response.json())

    def apply(self, action: Action) -> ApplyResult:
        response = self._send("POST", "/v1/worker/actions", json=action.model_dump(mode="json"),
                              retry_on=httpx.TransportError)
        if response.is_client_error:
            return ApplyResult(idempotency_key=action.idempotency_key, status="failed",
                               message=_message(response))
        response.raise_for_status()
        return ApplyResult.model_validate(response.json())

    def submit(self, request: Request) -> SubmitResult:
        response = self._send("POST", "/v1/worker/requests", json=asdict(request), retry_on=httpx.ConnectError)
        if response.is_client_error:
            return SubmitResult(request_id=request.request_id, status="rejected", message=_message(response))
        response.raise_for_status()
        return SubmitResult.model_validate(response.json())

    def _send(self, method: str, path: str, *, retry_on: type[Exception], **kw: object) -> httpx.Response:
        send = retry(retry=retry_if_exception_type(retry_on), stop=stop_after_attempt(self._attempts),
                     wait=_BACKOFF, reraise=True)(self._http.request)
        return send(method, path, **kw)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return f"HTTP {response.status_code}: {body.get('message') or body}"


def __getattr__(name: str) -> object:
    """`LocalWorkerClient` (the in-process WorkerClient) is reachable from here too, without importing torch for
    HTTP-only users."""
    if name == "LocalWorkerClient":
        from workers.control import LocalWorkerClient

        return LocalWorkerClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
