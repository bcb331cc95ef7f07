"""`/v1/fleets/{name}/forecasts` and `/v1/forecasts/{id}`: forecast every model of a fleet now from its stored
telemetry (the same forecasters a replanning cycle runs), and read stored forecasts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from controller.api.deps import ControllerDep, PlanToken, ReadToken, SessionDep
from controller.api.errors import error_responses
from controller.api.routes.fleets import FleetName
from controller.api.schemas import ForecastPublic
from controller.replan.cycle import make_scenarios
from controller.replan.observe import spot_availability
from db.fleets import fleet_spec, spec_sha256
from db.forecasts import get_forecast, latest_forecasts, save_forecast
from db.models import ForecastRow
from db.telemetry import read_telemetry

router = APIRouter(tags=["forecasts"])
AUTH = (401, 403, 422, 503)


def forecast_public(row: ForecastRow) -> ForecastPublic:
    payload = row.payload
    return ForecastPublic(
        id=row.id, series=row.series, quantity=row.quantity, method=row.method,
        fallback_reason=payload.get("fallback_reason"), start_s=row.start_s, interval_s=row.interval_s,
        mean=list(payload["mean"]), quantiles={str(k): list(v) for k, v in payload["quantiles"].items()},
        created_at=row.created_at,
    )


@router.post("/v1/fleets/{name}/forecasts", response_model=list[ForecastPublic], status_code=201,
             responses=error_responses(404, *AUTH), summary="Forecast every model of the fleet now and store it")
def make_forecasts(name: FleetName, ctl: ControllerDep, session: SessionDep, _: PlanToken) -> list[ForecastPublic]:
    spec = fleet_spec(session, name=name)
    now = ctl.clock.now()
    history, _outcomes = read_telemetry(session, fleet=name, start_s=now - ctl.settings.history_s, end_s=now)
    availability = spot_availability(ctl, name, spec, now)
    runtime = ctl.fleet(name)
    with runtime.lock:
        _scenarios, forecasts = make_scenarios(ctl, runtime, spec, spec_sha256(spec), history, now,
                                               availability=availability)
    return [forecast_public(save_forecast(session, fleet=name, forecast=f)) for f in forecasts]


@router.get("/v1/fleets/{name}/forecasts", response_model=list[ForecastPublic], responses=error_responses(404, *AUTH),
            summary="The newest forecast of each series of the fleet")
def list_forecasts(name: FleetName, session: SessionDep, _: ReadToken) -> list[ForecastPublic]:
    return [forecast_public(r) for r in latest_forecasts(session, fleet=name)]


@router.get("/v1/forecasts/{forecast_id}", response_model=ForecastPublic, responses=error_responses(404, *AUTH),
            summary="One stored forecast")
def get_forecast_route(forecast_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
                       _: ReadToken) -> ForecastPublic:
    return forecast_public(get_forecast(session, forecast_id=forecast_id))
