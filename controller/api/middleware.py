"""ASGI middleware of the plan API: refuse bodies over `max_body_bytes` (413, before they are read whole) and
count every request in Prometheus by method, route template and status (route templates, not paths, so the label
set stays bounded)."""

from __future__ import annotations

import json
import time
from typing import Any

from controller.api.errors import BodyTooLarge, too_large
from controller.metrics import ControllerMetrics

Scope = dict[str, Any]


class ApiMiddleware:
    def __init__(self, app: Any, *, metrics: ControllerMetrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send, declared, status)
            self._count(scope, status["code"], started)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(received, self.max_body_bytes)
            return message

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, counting_send)
        except BodyTooLarge:  # raised outside FastAPI's handlers (e.g. by a route reading the stream)
            await self._refuse(send, received, status)
        finally:
            self._count(scope, status["code"], started)

    async def _refuse(self, send: Any, size: int, status: dict[str, int]) -> None:
        error = too_large("body", size, self.max_body_bytes, "bytes")
        payload = json.dumps(error.body.model_dump()).encode()
        status["code"] = 413
        self.metrics.rejected.labels(reason="too_large").inc()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})

    def _count(self, scope: Scope, code: int, started: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self.metrics.http_requests.labels(method=scope["method"], route=template, status=str(code)).inc()
        self.metrics.http_seconds.labels(route=template).observe(time.perf_counter() - started)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
