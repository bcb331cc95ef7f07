"""Records of work the controller runs: replanning cycles and what-if jobs.

A replanning cycle is recorded when it starts (`running`) and finished with its outcome, inputs digest, forecasts,
plan, stage timings and — when it failed — the error, so a failed cycle stays visible and the next one runs
normally. What-if jobs go queued → running → succeeded (with a report) | failed (with an error).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InputError
from db.fleets import get_fleet
from db.models import REPLAN_OUTCOMES, ReplanRunRow, WhatIfRunRow, utcnow
from db.rows import add_row, row_by_key


def start_replan_run(
    session: Session, *, fleet: str, cycle_id: str, trigger: str, holder: str | None = None
) -> ReplanRunRow:
    """Record that cycle `cycle_id` of `fleet` started (outcome `running`)."""
    if session.get(ReplanRunRow, cycle_id) is not None:
        raise InputError("cycle_id", cycle_id, "a new cycle id", problem=f"cycle {cycle_id!r} is already recorded")
    row = ReplanRunRow(
        cycle_id=cycle_id, fleet_id=get_fleet(session, name=fleet).id, trigger=trigger, holder=holder,
        outcome="running", forecast_ids=[], timings_s={},
    )
    return add_row(session, row)


def finish_replan_run(
    session: Session,
    *,
    cycle_id: str,
    outcome: str,
    inputs_digest: str | None = None,
    forecast_ids: Sequence[int] = (),
    plan_id: str | None = None,
    timings_s: Mapping[str, float] | None = None,
    error: str | None = None,
) -> ReplanRunRow:
    """Record how cycle `cycle_id` ended. `outcome` is one of planned, unchanged, skipped, failed."""
    final = [o for o in REPLAN_OUTCOMES if o != "running"]
    if outcome not in final:
        raise InputError("outcome", outcome, f"one of {', '.join(final)}")
    row = row_by_key(session, ReplanRunRow, cycle_id, kind="replanning cycle")
    row.outcome = outcome
    row.finished_at = utcnow()
    row.inputs_digest = inputs_digest
    row.forecast_ids = [int(i) for i in forecast_ids]
    row.plan_id = plan_id
    row.timings_s = dict(timings_s or {})
    row.error = error
    session.flush()
    return row


def list_replan_runs(session: Session, *, fleet: str, limit: int = 50) -> list[ReplanRunRow]:
    """Cycles of `fleet`, newest first."""
    fleet_id = get_fleet(session, name=fleet).id
    query = select(ReplanRunRow).where(ReplanRunRow.fleet_id == fleet_id)
    return list(session.scalars(query.order_by(ReplanRunRow.started_at.desc()).limit(limit)))


def create_whatif_run(session: Session, *, config: Mapping[str, Any], run_id: str | None = None) -> WhatIfRunRow:
    """Queue a what-if job with its resolved `config` (JSON-ready); the id is generated unless given."""
    return add_row(session, WhatIfRunRow(run_id=run_id or uuid.uuid4().hex, config=dict(config), status="queued"))


def get_whatif_run(session: Session, *, run_id: str) -> WhatIfRunRow:
    return row_by_key(session, WhatIfRunRow, run_id, kind="what-if run")


def start_whatif_run(session: Session, *, run_id: str) -> WhatIfRunRow:
    """Mark a queued job running; a job that is not queued is an `InputError` (it runs once)."""
    row = get_whatif_run(session, run_id=run_id)
    if row.status != "queued":
        raise InputError("run_id", run_id, "a queued what-if run", problem=f"run {run_id!r} is {row.status}")
    row.status = "running"
    row.started_at = utcnow()
    session.flush()
    return row


def finish_whatif_run(
    session: Session, *, run_id: str, report: Mapping[str, Any] | None = None, error: str | None = None
) -> WhatIfRunRow:
    """Finish a job: `succeeded` with its `report`, or `failed` with its `error` (exactly one of the two)."""
    if (report is None) == (error is None):
        raise InputError("report/error", None, "exactly one of report (success) or error (failure)")
    row = get_whatif_run(session, run_id=run_id)
    row.status = "succeeded" if report is not None else "failed"
    row.report = dict(report) if report is not None else None
    row.error = error
    row.finished_at = utcnow()
    session.flush()
    return row


def list_whatif_runs(session: Session, *, limit: int = 50) -> list[WhatIfRunRow]:
    return list(session.scalars(select(WhatIfRunRow).order_by(WhatIfRunRow.created_at.desc()).limit(limit)))
