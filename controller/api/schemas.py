"""What the API takes in (`*In`) and gives out (`*Public`). Stored rows never leave the controller as they are;
core models (Plan, Action, WorkerStatus, Outcome) are returned whole where they are the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.settings import POLICIES
from controller.whatif.options import MAX_SWEEP_POINTS, SWEEP_PARAMETERS, Sweep, WhatIfConfig
from core.plan import Outcome, Plan, Replica
from core.status import WorkerStatus
from db.models import REQUEST_OUTCOMES

_IN = ConfigDict(extra="forbid", allow_inf_nan=False)
Policy = Literal["fleetwise", "dedicated", "muxserve", "qlm", "prism"]
assert set(Policy.__args__) == set(POLICIES)  # type: ignore[attr-defined]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
INT64_MAX = 2**63 - 1  # request ids are stored as BIGINT


# -- fleets ----------------------------------------------------------------------------------------------------------
class FleetIn(BaseModel):
    """A fleet spec, as JSON (`spec`) or as the text of a fleet YAML (`yaml`): exactly one of the two."""

    model_config = _IN
    spec: dict[str, Any] | None = Field(default=None, description="The FleetSpec as JSON (apiVersion, kind, …).")
    yaml: str | None = Field(default=None, max_length=1_000_000, description="A fleet YAML document (nested at most "
                             "32 deep; aliases, if any, expanding to at most 1,000,000 values).")

    @model_validator(mode="after")
    def _one(self) -> FleetIn:
        if (self.spec is None) == (self.yaml is None):
            raise ValueError("give exactly one of 'spec' (JSON) or 'yaml' (text)")
        return self


class FleetSettingsIn(BaseModel):
    """Controller settings of a fleet (stored as its `fleetwise/*` labels; a change makes a new version)."""

    model_config = _IN
    advisory: bool | None = Field(default=None, description="Store plans without applying them until approved.")
    policy: Policy | None = Field(default=None, description="Planner of the fleet's cron cycles.")


class FleetPublic(BaseModel):
    name: str
    version: int = Field(description="Current spec version (1 for the first).")
    advisory: bool
    policy: str
    num_models: int
    num_gpus: int
    has_backend: bool = Field(description="Whether the controller can execute plans on this fleet's workers.")
    created_at: datetime


class FleetDetail(FleetPublic):
    spec: dict[str, Any]


class FleetVersionPublic(BaseModel):
    version: int
    spec_sha256: str
    created_at: datetime
    spec: dict[str, Any] | None = None


# -- telemetry -------------------------------------------------------------------------------------------------------
class TelemetryBatchIn(BaseModel):
    """Requests as columns (one list per field, all of the same length): what was asked and, optionally, what
    happened. Latency lists may hold null where unknown; without `outcome` the rows record arrivals only."""

    model_config = _IN
    request_id: list[Annotated[int, Field(ge=0, le=INT64_MAX)]]
    model: list[Annotated[str, Field(min_length=1, max_length=128)]]
    slo_class: list[Annotated[str, Field(min_length=1, max_length=64)]]
    arrival_s: list[Annotated[float, Field(allow_inf_nan=False)]]
    prompt_tokens: list[Annotated[int, Field(ge=0, le=10_000_000)]]
    output_tokens: list[Annotated[int, Field(ge=0, le=10_000_000)]]
    outcome: list[Literal[REQUEST_OUTCOMES]] | None = None  # type: ignore[valid-type]
    ttft_s: list[NonNegFloat | None] | None = None
    tpot_s: list[NonNegFloat | None] | None = None
    e2e_s: list[NonNegFloat | None] | None = None
    finish_s: list[Annotated[float, Field(allow_inf_nan=False)] | None] | None = None
    drop_reason: list[Annotated[str, Field(max_length=200)] | None] | None = None
    worker_id: list[Annotated[str, Field(max_length=128)] | None] | None = None
    replica_id: list[Annotated[str, Field(max_length=128)] | None] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> TelemetryBatchIn:
        n = len(self.request_id)
        for name, value in self:
            if value is not None and len(value) != n:
                raise ValueError(f"column {name!r} has {len(value)} values; request_id has {n}: one per request")
        return self

    def __len__(self) -> int:
        return len(self.request_id)


class TelemetryAck(BaseModel):
    fleet: str
    rows: int = Field(description="Rows written (committed before this answer).")


# -- forecasts -------------------------------------------------------------------------------------------------------
class ForecastPublic(BaseModel):
    id: int
    series: str
    quantity: str
    method: str
    fallback_reason: str | None
    start_s: float
    interval_s: float
    mean: list[float]
    quantiles: dict[str, list[float]] = Field(description="Quantile level → one value per interval.")
    created_at: datetime


# -- plans and cycles ------------------------------------------------------------------------------------------------
class PlanCreateIn(BaseModel):
    """Plan now (one replanning cycle)."""

    model_config = _IN
    policy: Policy | None = Field(default=None, description="Planner (default: the fleet's).")
    budget_s: Annotated[float, Field(gt=0, le=120)] | None = Field(default=None, description="Planner budget.")
    fleet_version: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Refuse (409) unless the fleet is still at this version.")


WorkerId = Annotated[str, Field(min_length=1, max_length=256)]


class PreemptionNoticeIn(BaseModel):
    """A provider's notice that it will take GPUs away (a spot interruption, a host maintenance event): one GPU
    (`worker_id`) or all of a VM's (`worker_ids`), exactly one of the two."""

    model_config = _IN
    worker_id: WorkerId | None = Field(default=None, description="The GPU the provider will take (its worker id).")
    worker_ids: Annotated[list[WorkerId], Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="The GPUs of the VM the provider will take: one replan for all.")
    leaves_in_s: Annotated[float, Field(ge=0, le=86400)] | None = Field(
        default=None, description="Seconds until it leaves, when the notice says (AWS gives 120, GCP and Azure 30).")

    @model_validator(mode="after")
    def _one(self) -> PreemptionNoticeIn:
        if (self.worker_id is None) == (self.worker_ids is None):
            raise ValueError("give exactly one of 'worker_id' (a GPU) or 'worker_ids' (the GPUs of a VM)")
        return self

    @property
    def gpus(self) -> list[str]:
        return [self.worker_id] if self.worker_id is not None else list(dict.fromkeys(self.worker_ids or []))


class CyclePublic(BaseModel):
    cycle_id: str
    fleet: str
    trigger: str
    outcome: Literal["running", "planned", "unchanged", "skipped", "failed"]
    plan_id: str | None = None
    error: str | None = None
    timings_s: dict[str, float] = {}
    forecast_ids: list[int] = []
    inputs_digest: str | None = None
    holder: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    advisory: bool | None = Field(default=None, description="Cycles run by this request: the plan awaits approval.")
    executed: bool | None = Field(default=None, description="Cycles run by this request: the plan was executed.")
    note: str | None = None


class PlanSummary(BaseModel):
    plan_id: str
    fleet: str
    fleet_version: int | None
    parent_id: str | None
    generation: int
    policy: str
    status: str
    status_message: str | None
    advisory: bool
    created_at_s: float
    expected: Outcome | None
    num_actions: int
    stored_at: datetime


class PlanPublic(PlanSummary):
    plan: Plan


class ReplicaChange(BaseModel):
    replica_id: str
    before: Replica
    after: Replica


class RoutingChange(BaseModel):
    model: str
    before: dict[str, float]
    after: dict[str, float]


class PlanDiff(BaseModel):
    """What `plan_id` changes relative to `against`."""

    plan_id: str
    against: str
    replicas_added: list[Replica]
    replicas_removed: list[Replica]
    replicas_changed: list[ReplicaChange]
    routing_changed: list[RoutingChange]
    gpus_before: int
    gpus_after: int
    expected_before: Outcome | None
    expected_after: Outcome | None


class ActionPublic(BaseModel):
    seq: int
    idempotency_key: str
    kind: str
    worker_id: str | None
    status: str
    attempts: int
    message: str | None
    worker_revision: int | None
    duration_s: float | None
    depends_on: list[int]
    reason: str
    started_at: datetime | None
    finished_at: datetime | None


class ObservedOutcome(BaseModel):
    """What the telemetry says happened while a plan was in force."""

    num_requests: int
    completed: int
    dropped: int
    slo_attainment: float | None = Field(description="Completed within both SLO targets / requests (None: none).")
    per_class: dict[str, float]
    goodput_tokens_per_s: float
    gpu_hours: float
    cost_usd: float


class PlanOutcomePublic(BaseModel):
    """A plan's prediction (over its horizon) next to what followed it (over the window it was in force)."""

    plan_id: str
    status: str
    window_start_s: float
    window_end_s: float
    horizon_s: float
    predicted: Outcome | None
    predicted_cost_usd_per_hour: float | None
    observed: ObservedOutcome
    observed_cost_usd_per_hour: float


# -- workers, what-if, health ----------------------------------------------------------------------------------------
class WorkersPublic(BaseModel):
    fleet: str
    source: Literal["live", "snapshot"] = Field(description="live: asked now through the backend; snapshot: stored.")
    workers: list[WorkerStatus]
    unreachable: dict[str, str] = Field(default={}, description="GPU id → why it did not answer.")


class SweepIn(Sweep):
    """A load sweep as `fleetwise whatif --sweep` allows it: a known parameter, 1 to MAX_SWEEP_POINTS rates > 0."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    parameter: Literal[SWEEP_PARAMETERS] = Field(  # type: ignore[valid-type]
        description="What varies: 'rate' (a multiplier on rate_scale).")
    values: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        min_length=1, max_length=MAX_SWEEP_POINTS, description="The rate multipliers, one run per point.")


class WhatIfIn(WhatIfConfig):
    """A what-if job: the `fleetwise whatif` configuration, with finite numbers and a sweep the CLI would take."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    sweep: SweepIn | None = None


class WhatIfPublic(BaseModel):
    run_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    config: dict[str, Any]
    report: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    database: str = Field(description="reachable | the error")
    revision: str | None
    head: str
