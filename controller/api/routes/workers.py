"""Workers: `GET /v1/fleets/{name}/workers`, every worker's status, asked now through the fleet's executor backend
(or the newest stored snapshots when the fleet has none); `POST /v1/fleets/{name}/preemption-notices`, a provider's
notice that a GPU will be taken away.

A notice is what a node agent forwards from the cloud's metadata service (an AWS spot interruption notice, a GCP
preemption or maintenance event, an Azure scheduled event). The controller replans at once rather than at the next
cron tick; fleetwise's plan no longer places anything on the GPU, moves the offline work it runs first, and
re-hosts its replicas on GPUs that stay, and it remembers the notice until the GPU leaves (the baselines do not
read notices). Without notices the controller learns of a reclaimed GPU only when its worker stops answering or
answers unhealthy (`controller.replan.observe.health_changes`)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from controller.api.deps import ControllerDep, PlanToken, ReadToken, SessionDep
from controller.api.errors import error_responses
from controller.api.routes.fleets import FleetName
from controller.api.routes.plans import cycle_result_public
from controller.api.schemas import CyclePublic, PreemptionNoticeIn, WorkersPublic
from controller.replan.cycle import run_cycle
from core.errors import InputError
from core.state import EventKind, FleetEvent
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


@router.post("/v1/fleets/{name}/preemption-notices", response_model=CyclePublic, status_code=201,
             responses=error_responses(400, 404, 401, 403, 422, 503),
             summary="GPUs will be taken away: replan now (201 when a plan was stored, 200 when the cycle failed)")
def preemption_notice(name: FleetName, body: PreemptionNoticeIn, ctl: ControllerDep, response: Response,
                      _: PlanToken) -> CyclePublic:
    with ctl.sessions.begin() as s:
        spec = fleet_spec(s, name=name)
    gpus = set(spec.gpu_ids())
    for i, gpu in enumerate(body.gpus):
        if gpu not in gpus:
            shown = ", ".join(spec.gpu_ids()[:6]) + (f" … ({len(gpus)} in all)" if len(gpus) > 6 else "")
            raise InputError("worker_id" if body.worker_id is not None else f"worker_ids[{i}]", gpu,
                             f"a GPU of fleet {name}: {shown}")
    when = "" if body.leaves_in_s is None else f"; leaves in {body.leaves_in_s:g} s"
    runtime, now = ctl.fleet(name), ctl.clock.now()
    for gpu in body.gpus:
        runtime.add_notice(FleetEvent(EventKind.PREEMPTION_NOTICE, now, worker_id=gpu,
                                      detail=f"notice through the API{when}"))
    ctl.metrics.preemption_notices.inc(len(body.gpus))
    result = run_cycle(ctl, name, trigger="event:preemption_notice")
    if result.plan_id is None:
        response.status_code = status.HTTP_200_OK
    return cycle_result_public(result)
