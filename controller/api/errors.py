"""One error body for every refusal, and the handlers that produce it.

Every 4xx (and the 503 of an unreachable database) answers `ErrorBody` — `{"error", "where", "value", "allowed",
"message"}`, the form of `core.errors.InputError.to_dict()` — so clients read one shape:

| status | `error` | when |
|---|---|---|
| 400 | `invalid_input` | a value the controller cannot use (`InputError`) |
| 401 | `unauthenticated` | no bearer token, or an unknown or revoked one |
| 403 | `forbidden` | the token lacks the route's scope |
| 404 | `not_found` | an unknown fleet, plan, forecast, cycle or what-if run |
| 409 | `conflict` | the fleet changed since the plan was made; a plan status that forbids the move |
| 413 | `too_large` | a body or telemetry batch over the limits |
| 422 | `invalid_input` | a body or parameter that does not validate (malformed JSON, wrong types) |
| 503 | `database_unavailable` | the database cannot be reached; retry |
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from controller.metrics import ControllerMetrics
from controller.replan.execute import Conflict
from core.errors import InputError, NotFoundError, _jsonable, strict_json


class ErrorBody(BaseModel):
    """Why a request was refused: the field or place (`where`), the offending `value`, what is `allowed`."""

    error: str = Field(description="invalid_input | unauthenticated | forbidden | not_found | conflict | too_large | "
                                   "database_unavailable")
    where: str | None = Field(default=None, description="The field, parameter or header at fault.")
    value: Any = Field(default=None, description="The offending value (JSON), if any.")
    allowed: str | None = Field(default=None, description="What would have been accepted.")
    message: str = Field(description="One readable line saying all of the above.")
    source: str | None = Field(default=None, description="The document the value came from (YAML bodies).")


class ApiError(Exception):
    """A refusal with its HTTP status and body."""

    def __init__(self, status: int, error: str, message: str, *, where: str | None = None, value: Any = None,
                 allowed: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers
        self.body = ErrorBody(error=error, where=where, value=_jsonable(value), allowed=allowed, message=message)


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once a body without (or with a false) Content-Length passes the limit; FastAPI lets
    HTTPExceptions through its body parsing, and the handler below answers 413 with the error body."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(413, f"body: more than {limit} bytes; split the batch")
        self.size, self.limit = size, limit


class ErrorResponse(JSONResponse):
    """An error body as strict JSON whatever the value it echoes (`core.errors.strict_json`)."""

    def render(self, content: Any) -> bytes:
        return strict_json(content)


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, where="Authorization", allowed="Authorization: Bearer <token>",
                    headers={"WWW-Authenticate": "Bearer"})


def forbidden(scope: str, scopes: tuple[str, ...]) -> ApiError:
    return ApiError(403, "forbidden", f"this route needs a token with scope {scope!r}; the token has "
                    f"{', '.join(scopes) or 'none'}", where="Authorization", value=list(scopes),
                    allowed=f"a token with scope {scope} or higher (read < plan < admin)")


def too_large(where: str, value: int, limit: int, unit: str) -> ApiError:
    return ApiError(413, "too_large", f"{where}: {value} {unit} is over the limit of {limit}; split the batch",
                    where=where, value=value, allowed=f"at most {limit} {unit}")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each listed status documented with `ErrorBody`."""
    text = {400: "Invalid input", 401: "Missing, unknown or revoked token", 403: "Token lacks the scope",
            404: "Not found", 409: "Conflicts with the current state", 413: "Too large",
            422: "Validation error", 503: "Database unavailable"}
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}


MAX_VALUE_CHARS = 200  # offending values are echoed back up to this length
JSON_DOCUMENT = "a JSON document (UTF-8, RFC 8259) sent as Content-Type: application/json"
HTTP_ERRORS = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "too_large"}
REASON_BY_STATUS = {400: "invalid", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 409: "conflict",
                    413: "too_large", 422: "invalid", 503: "database_unavailable"}


def install_handlers(app: FastAPI, metrics: ControllerMetrics) -> None:
    """Map every refusal to `ErrorBody` with its status (see the module docstring)."""

    def respond(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.rejected.labels(reason=REASON_BY_STATUS.get(status, "invalid")).inc()
        return ErrorResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.body.model_dump(), exc.headers)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return respond(409, _input_body("conflict", exc))

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return respond(400, _input_body("invalid_input", exc))

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        known = f"one of: {', '.join(sorted(exc.known)[:20])}" if exc.known else "an existing one"
        body = ErrorBody(error="not_found", where=exc.kind, value=_jsonable(exc.name), allowed=known,
                         message=str(exc))
        return respond(404, body.model_dump())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        unread = _unread_body(request, exc, first)
        if unread is not None:
            return respond(422, unread.model_dump())
        where = ".".join(str(p) for p in first.get("loc", ()))
        value = _echo(first.get("input"))
        body = ErrorBody(error="invalid_input", where=where, value=value, allowed=str(first.get("msg")),
                         message=f"{where}: {first.get('msg')}")
        return respond(422, body.model_dump())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyTooLarge):
            return respond(413, too_large("body", exc.size, exc.limit, "bytes").body.model_dump())
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's "There was an error parsing the body": not UTF-8, nested too deeply, a number too long
            body = ErrorBody(error="invalid_input", where="body", allowed=JSON_DOCUMENT,
                             message=f"body: cannot be read as JSON ({exc.__cause__})")
            return respond(422, body.model_dump())
        error = HTTP_ERRORS.get(exc.status_code, "invalid_input")
        headers = getattr(exc, "headers", None)
        allowed = None
        if exc.status_code == 405:
            # Starlette names only the methods of the first route matching the path; a path served by several
            # routes (GET and POST /v1/fleets) needs them all.
            methods = allowed_methods(app, request.url.path)
            headers, allowed = {**(headers or {}), "Allow": ", ".join(methods)}, ", ".join(methods)
        body = ErrorBody(error=error, message=str(exc.detail), where="path" if exc.status_code in (404, 405) else None,
                         value=request.method if exc.status_code == 405 else None, allowed=allowed)
        return respond(exc.status_code, body.model_dump(), headers)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: DBAPIError) -> JSONResponse:
        return _database_unavailable(respond, exc)

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return _database_unavailable(respond, exc)
        raise exc


def _input_body(error: str, exc: InputError) -> dict[str, Any]:
    """`exc.to_dict()` with its value echoed as `_echo` shows it."""
    return ErrorBody(error=error, where=exc.where, value=_echo(exc.value), allowed=exc.allowed, source=exc.source,
                     message=exc.message).model_dump()


def _echo(value: Any) -> Any:
    """The offending value for an error body: as JSON, or its text cut at MAX_VALUE_CHARS when longer (a value
    nested deeper than Python can print is named by its type)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"
    return _jsonable(value) if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _unread_body(request: Request, exc: RequestValidationError, first: dict[str, Any]) -> ErrorBody | None:
    """The refusal of a body that was never read as JSON — malformed, or sent with another content type (FastAPI
    then hands the model the raw bytes) — or None for a JSON body that does not validate."""
    if first.get("type") == "json_invalid":
        pos = first["loc"][-1]
        doc = exc.body if isinstance(exc.body, str) else ""
        return ErrorBody(error="invalid_input", where="body", value=doc[max(pos - 20, 0):pos + 20],
                         allowed=JSON_DOCUMENT,
                         message=f"body: not valid JSON at character {pos}: {first.get('ctx', {}).get('error')}")
    if tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), bytes):
        content_type = request.headers.get("content-type")
        return ErrorBody(error="invalid_input", where="Content-Type", value=content_type, allowed="application/json",
                         message=f"Content-Type: the body must be JSON sent as application/json, not "
                                 f"{content_type or 'without a content type'}")
    return None


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API document lists for the operation whose template matches `path`."""
    paths = app.openapi().get("paths", {})
    found = {m.upper() for template, ops in paths.items() if compile_path(template)[0].match(path) for m in ops}
    return sorted(found)


def _database_unavailable(respond: Any, exc: DBAPIError) -> JSONResponse:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    body = ErrorBody(error="database_unavailable", where="database", message=f"the database cannot be reached "
                     f"({reason}); nothing was written, retry", allowed="retry after a moment")
    return respond(503, body.model_dump(), {"Retry-After": "1"})
