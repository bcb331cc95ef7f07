"""`POST /v1/fleets/{name}/telemetry`: request telemetry in batches of columns, validated whole, then written in
bulk (`db.ingest.ingest_requests`) and committed before the answer — an acknowledged batch is stored, a refused
one wrote nothing."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from controller.api.deps import ControllerDep, PlanToken, SessionDep
from controller.api.errors import error_responses, too_large
from controller.api.routes.fleets import FleetName
from controller.api.schemas import TelemetryAck, TelemetryBatchIn
from core.errors import InputError
from core.fleet import FleetSpec
from core.requests import RequestTable
from db.fleets import fleet_spec
from db.ingest import ingest_requests
from db.telemetry import LABEL_COLUMNS, LATENCY_COLUMNS, RequestOutcomes

router = APIRouter(prefix="/v1/fleets", tags=["telemetry"])


@router.post("/{name}/telemetry", response_model=TelemetryAck, status_code=201,
             responses=error_responses(400, 401, 403, 404, 413, 422, 503),
             summary="Store a batch of request telemetry (columns of equal length)")
def ingest(name: FleetName, body: TelemetryBatchIn, ctl: ControllerDep, session: SessionDep,
           _: PlanToken) -> TelemetryAck:
    n = len(body)
    if n > ctl.settings.max_batch_rows:
        raise too_large("request_id", n, ctl.settings.max_batch_rows, "requests")
    spec = fleet_spec(session, name=name)
    table, outcomes = to_columns(body, spec)
    written = ingest_requests(session, fleet=name, table=table, outcomes=outcomes)
    session.flush()
    ctl.metrics.telemetry_rows.inc(written)
    return TelemetryAck(fleet=name, rows=written)


def to_columns(body: TelemetryBatchIn, spec: FleetSpec) -> tuple[RequestTable, RequestOutcomes | None]:
    """The batch as a `RequestTable` (sorted by arrival) and row-aligned `RequestOutcomes`; models and SLO
    classes must be the fleet's."""
    models, model_idx = _encode("model", body.model, spec.model_names)
    classes, slo_idx = _encode("slo_class", body.slo_class, [c.name for c in spec.slo_classes])
    order = np.argsort(np.asarray(body.arrival_s, np.float64), kind="stable")
    table = RequestTable.from_columns(
        arrival_s=np.asarray(body.arrival_s, np.float64)[order], model_idx=model_idx[order],
        slo_idx=slo_idx[order], prompt_tokens=np.asarray(body.prompt_tokens, np.int64)[order],
        output_tokens=np.asarray(body.output_tokens, np.int64)[order], model_names=models, slo_names=classes,
        request_id=np.asarray(body.request_id, np.int64)[order], sort=False,
    )
    if body.outcome is None:
        if any(getattr(body, c) is not None for c in (*LATENCY_COLUMNS, *LABEL_COLUMNS)):
            raise InputError("outcome", None, "an outcome per request whenever latencies or labels are given")
        return table, None
    pick = order.tolist()
    columns = {c: _reordered(getattr(body, c), pick) for c in (*LATENCY_COLUMNS, *LABEL_COLUMNS)}
    return table, RequestOutcomes.from_columns(outcome=_reordered(body.outcome, pick), **columns)


def _encode(field: str, values: list[str], known: list[str]) -> tuple[list[str], np.ndarray]:
    names, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True) if values else \
        (np.zeros(0, str), np.zeros(0, np.int64))
    unknown = [v for v in names.tolist() if v not in set(known)]
    if unknown:
        shown = ", ".join(known[:12]) + (" …" if len(known) > 12 else "")
        raise InputError(field, unknown[0], f"a {field} of the fleet: {shown}")
    return names.tolist(), codes


def _reordered(values: list | None, order: list[int]) -> list | None:
    return None if values is None else [values[i] for i in order]
