"""The observe stage of a replanning cycle: what the fleet looks like now, read from the database (spec, plans,
telemetry) and from the workers (through the executor backend; the newest stored snapshots when the fleet has none).
Spot pools' availability over the history window comes from the stored rounds of worker statuses
(`controller.replan.availability`): what the scenario builder forecasts each spot pool's GPUs from.

Per-model load (`core.state.ModelLoad`) is computed from the request telemetry of the last observation window.
Workers that do not answer are left out of the state — planners place only on GPUs that reported healthy — and
raise a `gpu_removed` event; so does a worker that answers unhealthy after answering healthy, and one healthy again
raises `gpu_added` (`health_changes`): planners re-place on both. A fleet none of whose workers answers cannot be
planned for, and the stage fails.
Requests that the router dropped for want of a replica (`core.state.UNSERVED_DROP_REASONS`) during the last observation window,
for a model no worker runs now, raise a `request_for_inactive_model` event: the demand exists, and planners that
activate on demand (fleetwise, prism, qlm) place the model instead of counting on an activation nobody asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controller.replan.availability import observed_availability
from controller.runtime import Controller, FleetRuntime
from core.actions import Residency
from core.fleet import FleetSpec
from core.requests import RequestTable
from core.state import UNSERVED_DROP_REASONS, EventKind, FleetEvent, FleetState, ModelLoad
from core.status import WorkerStatus
from db.fleets import fleet_spec, get_fleet, spec_sha256
from db.plans import latest_plan, to_plan
from db.telemetry import RequestOutcomes, read_telemetry
from db.workers import health_history, latest_worker_statuses, record_worker_statuses
from executors import WorkerSet
from forecasters.lengths import EmpiricalLengths, GroupLengths
from workloads.availability import AvailabilityTrace

CURRENT_STATUSES = ("applied", "applying")


class WorkersUnreachable(RuntimeError):
    """No worker of the fleet answered its status call."""


@dataclass(frozen=True)
class Observed:
    """Everything a cycle planned from."""

    spec: FleetSpec
    version: int
    spec_digest: str
    state: FleetState
    history: RequestTable
    outcomes: RequestOutcomes
    workers: WorkerSet | None
    availability: dict[str, AvailabilityTrace] = field(default_factory=dict)  # spot pools, as observed


def observe(ctl: Controller, runtime: FleetRuntime) -> Observed:
    """Read the fleet's spec, current plan, telemetry and workers as of `ctl.clock.now()`."""
    now = ctl.clock.now()
    name = runtime.name
    with ctl.sessions.begin() as s:
        version = get_fleet(s, name=name).current_version
        spec = fleet_spec(s, name=name)
        current = latest_plan(s, fleet=name, statuses=CURRENT_STATUSES)
        newest = latest_plan(s, fleet=name)
        history, outcomes = read_telemetry(s, fleet=name, start_s=now - ctl.settings.history_s, end_s=now)
        stored_statuses = latest_worker_statuses(s, fleet=name)
    workers = ctl.backends.get(name, spec)
    statuses, events = _worker_statuses(ctl, name, workers, stored_statuses, now)
    window_s = ctl.settings.forecast_interval_s
    events += _unserved_models(history, outcomes, statuses, now, window_s)
    state = FleetState(
        time_s=now, workers=tuple(statuses), current_plan=to_plan(current) if current is not None else None,
        load=model_loads(history, outcomes, now, window_s),
        events=tuple(runtime.events) + runtime.pending_notices() + tuple(events),
        observation_window_s=window_s, next_generation=newest.generation + 1 if newest is not None else None,
    )
    return Observed(spec, version, spec_sha256(spec), state, history, outcomes, workers,
                    spot_availability(ctl, name, spec, now))


def spot_availability(ctl: Controller, fleet: str, spec: FleetSpec, now: float) -> dict[str, AvailabilityTrace]:
    """Each spot pool's healthy workers over the history window, round by round of status calls (this round
    included); empty for a fleet without spot pools."""
    if not any(p.spot for p in spec.pools):
        return {}
    start = now - ctl.settings.history_s
    with ctl.sessions.begin() as s:
        rows = health_history(s, fleet=fleet, start_s=start, end_s=now)
    return observed_availability(spec, rows, start_s=start, end_s=now)


def _worker_statuses(ctl: Controller, fleet: str, workers: WorkerSet | None, stored: list[WorkerStatus],
                     now: float) -> tuple[list[WorkerStatus], list[FleetEvent]]:
    if workers is None:
        return stored, []
    seen = workers.observe()
    if not seen.statuses and seen.errors:
        detail = "; ".join(f"{w}: {e}" for w, e in sorted(seen.errors.items())[:4])
        raise WorkersUnreachable(f"no worker of fleet {fleet} answered ({len(seen.errors)} tried): {detail}")
    with ctl.sessions.begin() as s:
        record_worker_statuses(s, fleet=fleet, statuses=seen.statuses)
    events = [FleetEvent(EventKind.GPU_REMOVED, now, worker_id=w, detail=f"no status: {e}")
              for w, e in sorted(seen.errors.items())]
    return list(seen.statuses), events + health_changes(stored, seen.statuses, now)


def health_changes(before: list[WorkerStatus], now_seen: list[WorkerStatus], now: float) -> list[FleetEvent]:
    """Events for workers whose answer changed since their last stored status: healthy before and unhealthy now is
    `gpu_removed` (a spot GPU reclaimed under a worker that still answers, a device fault); unhealthy before and
    healthy now is `gpu_added`. A worker seen for the first time raises `gpu_removed` only if it answers unhealthy."""
    was = {w.worker_id: w.healthy for w in before}
    out = []
    for w in sorted(now_seen, key=lambda w: w.worker_id):
        if not w.healthy and was.get(w.worker_id, True):
            out.append(FleetEvent(EventKind.GPU_REMOVED, now, worker_id=w.worker_id, detail="reports unhealthy"))
        elif w.healthy and not was.get(w.worker_id, True):
            out.append(FleetEvent(EventKind.GPU_ADDED, now, worker_id=w.worker_id, detail="healthy again"))
    return out


def model_loads(history: RequestTable, outcomes: RequestOutcomes, now_s: float, window_s: float) -> dict[str, ModelLoad]:
    """Per model: arrival rate and mean prompt over the last `window_s`, mean output of completed requests (of the
    whole history when none completed in the window; of every request when none completed), and the latest
    arrival."""
    loads = {}
    recent_from = now_s - window_s
    completed = outcomes.labels("outcome") == "completed" if len(outcomes) else np.zeros(0, bool)
    for m, model in enumerate(history.model_names):
        rows = history.model_idx == m
        recent = rows & (history.arrival_s >= recent_from)
        done = rows & completed
        done_recent = done & recent
        # Lengths of completed requests, recent ones first; an arrivals-only history (an imported trace) still
        # records each request's true output length.
        pick = next((m for m in (done_recent, done, rows) if m.any()), rows)
        loads[model] = ModelLoad(
            model=model, request_rate_per_s=float(recent.sum()) / window_s,
            prompt_tokens_mean=float(history.prompt_tokens[recent].mean()) if recent.any() else 0.0,
            output_tokens_mean=float(history.output_tokens[pick].mean()) if pick.any() else 0.0,
            last_arrival_s=float(history.arrival_s[rows].max()) if rows.any() else None,
        )
    return loads


def observed_lengths(history: RequestTable, outcomes: RequestOutcomes) -> GroupLengths | None:
    """The queue planner's length model (`forecasters.lengths.GroupLengths`) from the output lengths the telemetry
    knows: requests that completed, and imported arrivals (outcome `unknown`), which carry the trace's true
    lengths. Dropped, rejected and cancelled requests produced no whole output and are left out. None when no
    request qualifies: the planner then works from the scenarios' mean lengths. This is what the what-if
    `fleetwise` policy gives its planner (`controller.whatif.predictive.ObservedLengths`), so a what-if run
    predicts the queue orders the live cycle makes."""
    if len(history) == 0:
        return None
    outcome = outcomes.labels("outcome")
    known = (outcome == "completed") | (outcome == "unknown")
    if not known.any():
        return None
    return GroupLengths(EmpiricalLengths.fit(history.take(np.flatnonzero(known))))


def _unserved_models(history: RequestTable, outcomes: RequestOutcomes, statuses: list[WorkerStatus], now: float,
                     window_s: float) -> list[FleetEvent]:
    """One `request_for_inactive_model` event per model whose requests were dropped for want of a replica in the
    last `window_s` and that no worker runs now."""
    codes = [i for i, r in enumerate(outcomes.drop_reasons) if r in UNSERVED_DROP_REASONS]
    if not codes or len(history) == 0:
        return []
    rows = np.isin(outcomes.drop_reason_idx, codes) & (history.arrival_s >= now - window_s)
    running = {r.model for w in statuses for r in w.replicas if r.residency is Residency.ACTIVE and not r.draining}
    counts = np.bincount(history.model_idx[rows], minlength=len(history.model_names))
    return [FleetEvent(EventKind.REQUEST_FOR_INACTIVE_MODEL, now, model=model,
                       detail=f"{int(n)} request(s) dropped without a replica in the last {window_s:g} s")
            for model, n in zip(history.model_names, counts, strict=True) if n and model not in running]
