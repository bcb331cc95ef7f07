"""`GET /v1/fleets/{name}/workers`: every worker's status, asked now through the fleet's executor backend (or the
newest stored snapshots when the fleet has none)."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import ControllerDep, ReadToken, SessionDep
from controller.api.errors import error_responses
from controller.api.routes.fleets import FleetName
from controller.api.schemas import WorkersPublic
from db.fleets import fleet_spec
from db.workers import latest_worker_statuses

router = APIRouter(tags=["workers"])


@router.get("/v1/fleets/{name}/workers", response_model=WorkersPublic,
            responses=error_responses(404, 401, 403, 422, 503), summary="Workers' status")
def workers(name: FleetName, ctl: ControllerDep, session: SessionDep, _: ReadToken) -> WorkersPublic:
    spec = fleet_spec(session, name=name)
    backend = ctl.backends.get(name, spec)
    if backend is None:
        return WorkersPublic(fleet=name, source="snapshot", workers=latest_worker_statuses(session, fleet=name))
    seen = backend.observe()
    return WorkersPublic(fleet=name, source="live", workers=list(seen.statuses), unreachable=dict(seen.errors))
