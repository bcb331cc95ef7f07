"""`/v1/whatif`: what-if jobs — a trace replayed against a fleet under several policies in the simulator — run in
the background on the controller's threads; the report is stored and polled by id.

Paths in the configuration are read on the controller's machine, relative to its working directory, as the
`fleetwise whatif` CLI reads them.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query

from controller.api.deps import ControllerDep, PlanToken, ReadToken, SessionDep
from controller.api.errors import error_responses
from controller.api.schemas import WhatIfIn, WhatIfPublic
from controller.runtime import Controller
from controller.whatif.options import WhatIfConfig, check_paths
from controller.whatif.policies import policy_names
from core.errors import InputError
from db.models import WhatIfRunRow
from db.runs import create_whatif_run, finish_whatif_run, get_whatif_run, list_whatif_runs, start_whatif_run

router = APIRouter(prefix="/v1/whatif", tags=["what-if"])
log = logging.getLogger(__name__)
AUTH = (401, 403, 422, 503)


def whatif_public(row: WhatIfRunRow) -> WhatIfPublic:
    return WhatIfPublic(run_id=row.run_id, status=row.status, config=row.config, report=row.report,  # type: ignore[arg-type]
                        error=row.error, created_at=row.created_at, started_at=row.started_at,
                        finished_at=row.finished_at)


@router.post("", response_model=WhatIfPublic, status_code=202, responses=error_responses(400, *AUTH),
             summary="Queue a what-if job; poll GET /v1/whatif/{run_id} for its report")
def create(body: WhatIfIn, ctl: ControllerDep, _: PlanToken) -> WhatIfPublic:
    known = policy_names()
    bad = next((p for p in body.policies if p not in known), None)
    if bad is not None or not body.policies:
        raise InputError("policies", bad if bad is not None else [], f"one or more of {', '.join(known)}")
    if len(set(body.policies)) != len(body.policies):
        raise InputError("policies", list(body.policies), "each policy once")
    from controller.whatif.runner import spot_replay_of
    from core.fleet import load_fleet

    try:
        check_paths(body)
        spot_replay_of(body, load_fleet(body.fleet), 0.0)  # the spot traces and spot_start_s, before queueing
    except InputError as exc:  # named after the CLI's options (--fleet, --spot-start); here they are body fields
        field = {"--spot-start": "spot_start_s"}.get(exc.where, exc.where.removeprefix("--"))
        raise InputError(field, exc.value, exc.allowed, problem=exc.problem) from None
    with ctl.sessions.begin() as s:
        row = create_whatif_run(s, config=body.model_dump(mode="json"))
    ctl.background(run_whatif, ctl, row.run_id, body)
    return whatif_public(row)


@router.get("", response_model=list[WhatIfPublic], responses=error_responses(*AUTH), summary="What-if jobs, newest first")
def list_runs(session: SessionDep, _: ReadToken, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[WhatIfPublic]:
    return [whatif_public(r) for r in list_whatif_runs(session, limit=limit)]


@router.get("/{run_id}", response_model=WhatIfPublic, responses=error_responses(404, *AUTH), summary="One what-if job")
def get_run(run_id: Annotated[str, Path(min_length=1, max_length=64)], session: SessionDep,
            _: ReadToken) -> WhatIfPublic:
    return whatif_public(get_whatif_run(session, run_id=run_id))


def run_whatif(ctl: Controller, run_id: str, config: WhatIfConfig) -> None:
    """Run the job in this thread (one simulation process at a time) and store its report or its error."""
    from controller.whatif.report import build_report
    from controller.whatif.runner import jobs_for, run_all

    with ctl.sessions.begin() as s:
        start_whatif_run(s, run_id=run_id)
    started = time.perf_counter()
    try:
        jobs = jobs_for(config)
        figures = run_all(config, jobs, processes=1, console=None)
        runs: dict[float, dict] = {}
        for job in jobs:
            runs.setdefault(job.point, {})[job.policy] = figures[job.index]
        sweep = config.sweep.model_dump() if config.sweep else None
        report = build_report(config.model_dump(mode="json"), runs, sweep, wall_s=time.perf_counter() - started)
    except Exception as exc:
        log.exception("what-if run %s failed", run_id)
        with ctl.sessions.begin() as s:
            finish_whatif_run(s, run_id=run_id, error=f"{type(exc).__name__}: {exc}")
        return
    with ctl.sessions.begin() as s:
        finish_whatif_run(s, run_id=run_id, report=report)
