"""Stored forecasts: each `core.forecast.Forecast` of a fleet's series, as made at a time."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.forecast import Forecast
from db.fleets import get_fleet
from db.models import ForecastRow
from db.rows import add_row, row_by_key


def save_forecast(session: Session, *, fleet: str, forecast: Forecast) -> ForecastRow:
    """Store `forecast` for `fleet`; the row's id is what replanning runs refer to."""
    row = ForecastRow(
        fleet_id=get_fleet(session, name=fleet).id, series=forecast.series, quantity=forecast.quantity,
        method=forecast.method, start_s=forecast.start_s, interval_s=forecast.interval_s,
        horizon=forecast.horizon, payload=forecast.model_dump(mode="json"),
    )
    return add_row(session, row)


def get_forecast(session: Session, *, forecast_id: int) -> ForecastRow:
    return row_by_key(session, ForecastRow, forecast_id, kind="forecast")


def to_forecast(row: ForecastRow) -> Forecast:
    """The `Forecast` a row stores (JSON turned quantile levels into strings; validation turns them back)."""
    return Forecast.model_validate(row.payload)


def latest_forecasts(session: Session, *, fleet: str, series: Collection[str] | None = None) -> list[ForecastRow]:
    """The newest forecast of each series of `fleet` (only `series`, if given), by series name."""
    fleet_id = get_fleet(session, name=fleet).id
    newest = select(func.max(ForecastRow.id)).where(ForecastRow.fleet_id == fleet_id).group_by(ForecastRow.series)
    if series is not None:
        newest = newest.where(ForecastRow.series.in_(list(series)))
    return list(session.scalars(select(ForecastRow).where(ForecastRow.id.in_(newest)).order_by(ForecastRow.series)))
