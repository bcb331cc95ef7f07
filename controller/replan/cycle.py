"""One replanning cycle of one fleet: observe → forecast → scenarios → plan → store → execute (unless advisory).

Each cycle is recorded in `replan_runs` when it starts (`running`) and when it ends, with its inputs digest, the
forecasts it stored, its plan, the seconds each stage took and its outcome:

- `planned` — a plan with actions was stored (and executed, unless the fleet is advisory or has no backend);
- `unchanged` — the plan keeps the fleet as it is (no actions); it is stored all the same, for its prediction;
- `skipped` — another cycle or execution of the fleet was running (cron ticks only);
- `failed` — a stage raised; `error` says which stage and why. Nothing else changes: the next tick runs normally.

A cycle never raises for what happens inside its stages (the cron must keep ticking); an unknown fleet or a
fleet without a spec is refused before anything is recorded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.fleet_settings import fleet_settings
from controller.replan.execute import execute_plan
from controller.replan.observe import Observed, observe, observed_lengths
from controller.runtime import Controller, FleetRuntime
from core.fleet import FleetSpec
from core.forecast import Forecast, ScenarioSet
from core.plan import Plan
from core.protocols import Planner
from core.requests import RequestTable
from db.fleets import fleet_spec
from db.forecasts import save_forecast
from db.plans import create_plan, list_plans, set_plan_status
from db.runs import finish_replan_run, start_replan_run
from executors import ExecutionReport
from workloads.availability import AvailabilityTrace

T = TypeVar("T")
OPEN_STATUSES = ("proposed", "approved")


@dataclass(frozen=True)
class CycleResult:
    """How one cycle ended (the same facts as its `replan_runs` row, plus the execution report)."""

    cycle_id: str
    fleet: str
    trigger: str
    outcome: str
    plan_id: str | None = None
    advisory: bool = False
    executed: bool = False
    error: str | None = None
    failed_stage: str | None = None
    note: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    forecast_ids: tuple[int, ...] = ()
    inputs_digest: str | None = None
    execution: ExecutionReport | None = None


class StageFailed(Exception):
    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage, self.cause = stage, cause
        detail = str(cause) or type(cause).__name__
        super().__init__(f"{stage}: {type(cause).__name__}: {detail}")


class _Stages:
    """Times each stage and names the stage that failed."""

    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return fn(*args)
        except Exception as exc:
            raise StageFailed(name, exc) from exc
        finally:
            self.timings_s[name] = round(time.perf_counter() - started, 6)


def run_cycle(ctl: Controller, fleet: str, *, trigger: str, cycle_id: str | None = None, policy: str | None = None,
              budget_s: float | None = None, wait: bool = True) -> CycleResult:
    """Run one cycle of `fleet` (see the module docstring). `wait=False` skips when the fleet is busy."""
    with ctl.sessions.begin() as s:
        fleet_spec(s, name=fleet)  # NotFoundError for an unknown fleet or one without a spec
    cycle_id = cycle_id or f"{trigger}-{uuid.uuid4().hex[:16]}"
    runtime = ctl.fleet(fleet)
    with ctl.sessions.begin() as s:
        start_replan_run(s, fleet=fleet, cycle_id=cycle_id, trigger=trigger, holder=ctl.settings.holder)
    if not runtime.lock.acquire(blocking=wait):
        return _finish(ctl, CycleResult(cycle_id, fleet, trigger, "skipped", note="the fleet was busy"))
    started = time.perf_counter()
    stages = _Stages()
    try:
        result = _stages(ctl, runtime, stages, cycle_id, trigger, policy, budget_s)
    except StageFailed as failed:
        result = CycleResult(cycle_id, fleet, trigger, "failed", error=str(failed)[:4000], failed_stage=failed.stage,
                             timings_s=stages.timings_s)
        ctl.metrics.cycle_failures.labels(reason=failed.stage).inc()
    finally:
        runtime.num_cycles += 1
        runtime.lock.release()
    ctl.metrics.cycle_seconds.observe(time.perf_counter() - started)
    return _finish(ctl, result)


def _stages(ctl: Controller, runtime: FleetRuntime, stages: _Stages, cycle_id: str, trigger: str,
            policy: str | None, budget_s: float | None) -> CycleResult:
    obs: Observed = stages.run("observe", observe, ctl, runtime)
    settings = fleet_settings(obs.spec, ctl.settings)
    scenarios, forecast_ids = stages.run("forecast", forecast_and_store, ctl, runtime, obs)
    planner = runtime.planner(policy or settings.policy, obs.spec, obs.spec_digest,
                              interval_s=ctl.settings.forecast_interval_s)
    budget = budget_s or ctl.settings.plan_budget_s
    plan: Plan = stages.run("plan", _plan, planner, obs, scenarios, budget)
    stages.run("store", _store, ctl, obs, plan, settings.advisory)
    base = {"cycle_id": cycle_id, "fleet": runtime.name, "trigger": trigger, "plan_id": plan.plan_id,
                "advisory": settings.advisory, "forecast_ids": tuple(forecast_ids), "inputs_digest": plan.input_digest}
    outcome = "planned" if plan.actions else "unchanged"
    runtime.events = []  # the events were handed to this plan
    runtime.take_notices(obs.state.events)
    if settings.advisory:
        return CycleResult(**base, outcome=outcome, note="advisory: stored, awaiting approval",
                           timings_s=stages.timings_s)
    if obs.workers is None:
        return CycleResult(**base, outcome=outcome, note="not executed: the fleet has no executor backend",
                           timings_s=stages.timings_s)
    report = stages.run("execute", _execute, ctl, plan.plan_id, obs.spec)
    if report.outcome == "failed" and report.actions:
        error = "execute: every action failed: " + "; ".join(report.replan_reasons)[:3000]
        ctl.metrics.cycle_failures.labels(reason="execute").inc()
        return CycleResult(**base, outcome="failed", executed=True, error=error, failed_stage="execute",
                           timings_s=stages.timings_s, execution=report)
    note = "" if report.outcome == "applied" else f"{report.outcome}: {len(report.replan_reasons)} action(s) did not " \
                                                   "take effect; the next cycle replans around them"
    return CycleResult(**base, outcome=outcome, executed=True, note=note, timings_s=stages.timings_s,
                       execution=report)


def forecast_and_store(ctl: Controller, runtime: FleetRuntime, obs: Observed) -> tuple[ScenarioSet, list[int]]:
    """Scenarios for the planner and the per-model forecasts behind them (stored; their ids returned)."""
    scenarios, forecasts = make_scenarios(ctl, runtime, obs.spec, obs.spec_digest, obs.history, obs.state.time_s,
                                          availability=obs.availability)
    with ctl.sessions.begin() as s:
        ids = [save_forecast(s, fleet=runtime.name, forecast=f).id for f in forecasts]
    return scenarios, ids


def make_scenarios(ctl: Controller, runtime: FleetRuntime, spec: FleetSpec, spec_digest: str, history: RequestTable,
                   now_s: float, *, availability: Mapping[str, AvailabilityTrace] | None = None,
                   ) -> tuple[ScenarioSet, list[Forecast]]:
    """Forecast every model from `history` (the fleet's builder refits cheaply between full selections) and every
    spot pool from the `availability` the controller observed (`controller.replan.availability`), and sample the
    scenarios. The forecasts returned are the models' and the pools' (series `pool:<name>`, GPUs)."""
    from forecasters.builder import BuilderConfig, ScenarioBuilder

    s = ctl.settings
    if runtime.builder is None or runtime.builder_key != spec_digest:
        config = BuilderConfig(interval_s=s.forecast_interval_s, horizon=s.forecast_horizon,
                               num_scenarios=s.num_scenarios, reduce_to=min(s.reduce_scenarios_to, s.num_scenarios),
                               lookback=max(4, int(s.history_s // s.forecast_interval_s)))
        runtime.builder, runtime.builder_key = ScenarioBuilder(spec, config), spec_digest
    scenarios = runtime.builder.build(history, now_s, seed=runtime.num_cycles, availability=availability)
    builder = runtime.builder
    return scenarios, [f.forecast(s.forecast_horizon) for f in [*builder.forecasters, *builder.pool_forecasters]]


def _plan(planner: Planner, obs: Observed, scenarios: ScenarioSet, budget_s: float) -> Plan:
    """The plan; a `FleetwisePlanner`'s queue planner first gets the group lengths the telemetry knows
    (`observed_lengths`), as the what-if `fleetwise` policy's does."""
    from optimizers.fleetwise import FleetwisePlanner

    if isinstance(planner, FleetwisePlanner):
        planner.lengths = observed_lengths(obs.history, obs.outcomes)
    return planner.plan(obs.spec, obs.state, scenarios, budget_s)


def _store(ctl: Controller, obs: Observed, plan: Plan, advisory: bool) -> None:
    """Store the plan against the fleet version it was made for; older plans not yet applied are superseded."""
    with ctl.sessions.begin() as s:
        create_plan(s, plan=plan, advisory=advisory, fleet_version=obs.version)
        for row in list_plans(s, fleet=plan.fleet, statuses=OPEN_STATUSES, limit=1000):
            if row.plan_id != plan.plan_id:
                set_plan_status(s, plan_id=row.plan_id, status="superseded", message=f"superseded by {plan.plan_id}")


def _execute(ctl: Controller, plan_id: str, spec: FleetSpec) -> ExecutionReport:
    with ctl.sessions.begin() as s:
        set_plan_status(s, plan_id=plan_id, status="applying")
    return execute_plan(ctl, plan_id, spec=spec)


def _finish(ctl: Controller, result: CycleResult) -> CycleResult:
    with ctl.sessions.begin() as s:
        finish_replan_run(s, cycle_id=result.cycle_id, outcome=result.outcome, plan_id=result.plan_id,
                          forecast_ids=result.forecast_ids, timings_s=result.timings_s, error=result.error,
                          inputs_digest=result.inputs_digest)
    ctl.metrics.cycles.labels(outcome=result.outcome).inc()
    return result
