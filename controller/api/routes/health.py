"""`/healthz` (the process answers), `/readyz` (the database is reachable and at the code's schema revision) and
`/metrics` (Prometheus text; needs a `read` token like every route but health)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from controller.api.deps import ControllerDep, ReadToken
from controller.api.errors import error_responses
from controller.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready"}},
            summary="Readiness: database reachable and migrations current")
def readyz(ctl: ControllerDep) -> Response:
    from alembic.runtime.migration import MigrationContext

    from db.migrate import head_revision

    head = head_revision()
    try:
        with ctl.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            revision = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        body = Readiness(status="not_ready", database=reason, revision=None, head=head)
        return JSONResponse(body.model_dump(), status_code=503)
    ready = revision == head
    body = Readiness(status="ready" if ready else "not_ready", database="reachable", revision=revision, head=head)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                                   **error_responses(401, 403)},
            summary="Prometheus metrics (fleetwise_*)", response_class=Response)
def metrics(ctl: ControllerDep, _: ReadToken) -> Response:
    return Response(ctl.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
