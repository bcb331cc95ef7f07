"""Fleets and their spec versions.

A fleet is known by name. `put_fleet` stores its spec as a new version when the spec changed (another sha256 of
its canonical JSON), so every plan can say which version it was made for and a plan for a fleet that changed since
can be refused. Functions take a `Session` and never commit: the caller's `with factory.begin()` block does.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFoundError
from core.fleet import FleetSpec
from db.models import FleetRow, FleetVersionRow
from db.rows import add_row


def spec_sha256(spec: FleetSpec) -> str:
    """sha256 of the spec's canonical JSON (sorted keys, no whitespace): equal specs, equal digests."""
    return hashlib.sha256(_canonical(spec.model_dump(mode="json")).encode()).hexdigest()


def put_fleet(session: Session, *, spec: FleetSpec) -> FleetVersionRow:
    """Store `spec` under its name; returns the version it is stored as (the current one if unchanged)."""
    fleet = ensure_fleet(session, name=spec.name)
    digest = spec_sha256(spec)
    current = _version_row(session, fleet, fleet.current_version) if fleet.current_version else None
    if current is not None and current.spec_sha256 == digest:
        return current
    row = FleetVersionRow(
        fleet_id=fleet.id, version=fleet.current_version + 1, spec=spec.model_dump(mode="json"), spec_sha256=digest
    )
    session.add(row)
    fleet.current_version = row.version
    session.flush()
    return row


def ensure_fleet(session: Session, *, name: str) -> FleetRow:
    """The fleet called `name`, created without a spec (version 0) if it does not exist yet."""
    fleet = session.scalar(select(FleetRow).where(FleetRow.name == name))
    return fleet if fleet is not None else add_row(session, FleetRow(name=name))


def get_fleet(session: Session, *, name: str) -> FleetRow:
    """The fleet called `name`; `NotFoundError` listing the known fleets otherwise."""
    fleet = session.scalar(select(FleetRow).where(FleetRow.name == name))
    if fleet is None:
        raise NotFoundError("fleet", name, list(session.scalars(select(FleetRow.name))))
    return fleet


def list_fleets(session: Session) -> list[FleetRow]:
    return list(session.scalars(select(FleetRow).order_by(FleetRow.name)))


def fleet_spec(session: Session, *, name: str, version: int | None = None) -> FleetSpec:
    """The spec of fleet `name` at `version` (default: the current one)."""
    fleet = get_fleet(session, name=name)
    wanted = fleet.current_version if version is None else version
    row = _version_row(session, fleet, wanted)
    if row is None:
        known = [str(v.version) for v in fleet.versions]
        raise NotFoundError(f"version of fleet {name!r}", wanted, known)
    return FleetSpec.model_validate(row.spec)


def _version_row(session: Session, fleet: FleetRow, version: int) -> FleetVersionRow | None:
    return session.scalar(
        select(FleetVersionRow).where(FleetVersionRow.fleet_id == fleet.id, FleetVersionRow.version == version)
    )


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
