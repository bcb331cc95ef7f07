"""`/v1/fleets`: create and update fleets from a YAML or JSON spec, read them and their versions, change their
controller settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from controller.api.deps import AdminToken, ControllerDep, ReadToken, SessionDep
from controller.api.errors import error_responses
from controller.api.schemas import FleetDetail, FleetIn, FleetPublic, FleetSettingsIn, FleetVersionPublic
from controller.fleet_settings import check_labels, fleet_settings, with_settings
from controller.replan.execute import Conflict
from controller.runtime import Controller
from core.errors import InputError, NotFoundError
from core.fleet import FleetSpec
from core.yamlspec import error_from_validation, validate_yaml_text
from db.fleets import fleet_spec, get_fleet, list_fleets, put_fleet
from db.models import FleetRow

router = APIRouter(prefix="/v1/fleets", tags=["fleets"])
FleetName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
AUTH = (401, 403, 422, 503)


def parse_spec(body: FleetIn) -> FleetSpec:
    """The FleetSpec in `body`; an `InputError` naming the field (YAML: the line) otherwise."""
    if body.yaml is not None:
        spec = validate_yaml_text(FleetSpec, body.yaml, source="body.yaml")
    else:
        try:
            spec = FleetSpec.model_validate(body.spec)
        except ValidationError as exc:
            err = error_from_validation(exc, root=FleetSpec)
            raise InputError(f"spec.{err.where}", err.value, err.allowed, problem=err.problem) from None
    check_labels(spec)
    return spec


def fleet_public(ctl: Controller, row: FleetRow, spec: FleetSpec | None, *, detail: bool = False) -> FleetPublic:
    settings = fleet_settings(spec, ctl.settings) if spec is not None else None
    fields = {
        "name": row.name, "version": row.current_version, "advisory": settings.advisory if settings else ctl.settings.advisory,
        "policy": settings.policy if settings else ctl.settings.policy,
        "num_models": len(spec.models) if spec else 0, "num_gpus": len(spec.gpu_ids()) if spec else 0,
        "has_backend": ctl.backends.has(row.name), "created_at": row.created_at,
    }
    if detail:
        return FleetDetail(**fields, spec=spec.model_dump(mode="json") if spec else {})
    return FleetPublic(**fields)


def _store(ctl: Controller, session: SessionDep, spec: FleetSpec, response: Response) -> FleetDetail:
    before = None
    try:
        before = get_fleet(session, name=spec.name).current_version
    except NotFoundError:
        pass
    try:
        version = put_fleet(session, spec=spec)
    except IntegrityError:  # another request stored this fleet between our read and our write
        raise Conflict("metadata.name", spec.name, "retry: the fleet as it is now will be read again",
                       problem=f"fleet {spec.name!r} was stored by another request at the same time") from None
    response.status_code = status.HTTP_201_CREATED if version.version != before else status.HTTP_200_OK
    return fleet_public(ctl, get_fleet(session, name=spec.name), spec, detail=True)  # type: ignore[return-value]


@router.post("", response_model=FleetDetail, status_code=201, responses=error_responses(400, *AUTH),
             summary="Create a fleet, or store a new version of it (201 when a version was added, 200 unchanged)")
def create_fleet(body: FleetIn, ctl: ControllerDep, session: SessionDep, response: Response,
                 _: AdminToken) -> FleetDetail:
    return _store(ctl, session, parse_spec(body), response)


@router.put("/{name}", response_model=FleetDetail, responses=error_responses(400, *AUTH),
            summary="Create or update fleet NAME (the spec's metadata.name must be NAME)")
def put_fleet_route(name: FleetName, body: FleetIn, ctl: ControllerDep, session: SessionDep, response: Response,
                    _: AdminToken) -> FleetDetail:
    spec = parse_spec(body)
    if spec.name != name:
        raise InputError("metadata.name", spec.name, f"the fleet named in the path ({name!r})")
    return _store(ctl, session, spec, response)


@router.get("", response_model=list[FleetPublic], responses=error_responses(*AUTH), summary="List fleets")
def list_fleets_route(ctl: ControllerDep, session: SessionDep, _: ReadToken) -> list[FleetPublic]:
    out = []
    for row in list_fleets(session):
        spec = fleet_spec(session, name=row.name) if row.current_version else None
        out.append(fleet_public(ctl, row, spec))
    return out


@router.get("/{name}", response_model=FleetDetail, responses=error_responses(404, *AUTH),
            summary="A fleet with its current spec")
def get_fleet_route(name: FleetName, ctl: ControllerDep, session: SessionDep, _: ReadToken) -> FleetDetail:
    row = get_fleet(session, name=name)
    spec = fleet_spec(session, name=name) if row.current_version else None
    return fleet_public(ctl, row, spec, detail=True)  # type: ignore[return-value]


@router.get("/{name}/versions", response_model=list[FleetVersionPublic], responses=error_responses(404, *AUTH),
            summary="Versions of a fleet's spec, oldest first")
def list_versions(name: FleetName, session: SessionDep, _: ReadToken) -> list[FleetVersionPublic]:
    row = get_fleet(session, name=name)
    return [FleetVersionPublic(version=v.version, spec_sha256=v.spec_sha256, created_at=v.created_at)
            for v in row.versions]


@router.get("/{name}/versions/{version}", response_model=FleetVersionPublic, responses=error_responses(404, *AUTH),
            summary="One version of a fleet's spec")
def get_version(name: FleetName, version: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
                _: ReadToken) -> FleetVersionPublic:
    row = get_fleet(session, name=name)
    found = next((v for v in row.versions if v.version == version), None)
    if found is None:
        raise NotFoundError(f"version of fleet {name!r}", version, [str(v.version) for v in row.versions])
    return FleetVersionPublic(version=found.version, spec_sha256=found.spec_sha256, created_at=found.created_at,
                              spec=found.spec)


@router.patch("/{name}/settings", response_model=FleetDetail, responses=error_responses(400, 404, *AUTH),
              summary="Change a fleet's controller settings (advisory mode, policy); makes a new version")
def patch_settings(name: FleetName, body: FleetSettingsIn, ctl: ControllerDep, session: SessionDep,
                   response: Response, _: AdminToken) -> FleetDetail:
    spec = with_settings(fleet_spec(session, name=name), advisory=body.advisory, policy=body.policy)
    result = _store(ctl, session, spec, response)
    response.status_code = status.HTTP_200_OK
    return result
