"""The plan API: `create_app(controller)` builds the FastAPI application over one `Controller`.

Routes live in `controller/api/routes/` (one module per resource), schemas in `controller/api/schemas.py`, refusals
in `controller/api/errors.py` (one error body everywhere). See docs/api.md.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from controller.api.deps import ReadToken
from controller.api.errors import install_handlers
from controller.api.middleware import ApiMiddleware
from controller.api.routes import fleets, forecasts, health, plans, telemetry, whatif, workers
from controller.runtime import Controller

DESCRIPTION = """SLO-aware control plane for GPU fleets serving many LLMs: fleets, request telemetry, forecasts,
plans (create, diff, approve, apply), actions, workers, what-if jobs.

Every route but `/healthz` and `/readyz` needs a bearer token (`fleetwise token create --name N --scopes read`):
`read` for GET, `plan` to ingest telemetry and make, approve and apply plans, `admin` to change fleets. Every
refusal answers the same JSON body: `{"error", "where", "value", "allowed", "message"}`."""


def create_app(controller: Controller) -> FastAPI:
    # The OpenAPI document is served by a route of its own (below) so that, like every route but health, it needs
    # a token; there is no unauthenticated docs page.
    app = FastAPI(title="fleetwise plan API", version="1", description=DESCRIPTION, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.controller = controller
    install_handlers(app, controller.metrics)
    for module in (health, fleets, telemetry, forecasts, plans, workers, whatif):
        app.include_router(module.router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: ReadToken) -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_middleware(ApiMiddleware, metrics=controller.metrics, max_body_bytes=controller.settings.max_body_bytes)
    return app
