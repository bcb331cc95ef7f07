"""What planners see of a fleet at one moment: workers, current plan, queued request groups, load, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from core.plan import Plan
from core.status import WorkerStatus


class EventKind(StrEnum):
    """Events a planner may subscribe to (besides the periodic tick)."""

    TICK = "tick"  # every replan_interval_s
    REQUEST_FOR_INACTIVE_MODEL = "request_for_inactive_model"  # a request arrived for a model with no active replica
    SLO_VIOLATION_PREDICTED = "slo_violation_predicted"  # a queue's estimated wait exceeds a group's deadline
    QUEUE_BUILDUP = "queue_buildup"  # a replica's waiting requests exceed its batch limit
    MODEL_IDLE = "model_idle"  # an active model received nothing for idle_threshold_s
    GPU_ADDED = "gpu_added"
    GPU_REMOVED = "gpu_removed"  # spot preemption or failure
    PREEMPTION_NOTICE = "preemption_notice"  # a spot GPU will be removed after its grace period
    ACTION_FAILED = "action_failed"


# Drop reasons of a router that had no replica for a request: at once (a router that does not hold requests) or
# after holding it for its timeout. Telemetry with either one is demand for a model that no worker serves.
NO_REPLICA = "no_replica"
NO_REPLICA_TIMEOUT = "no_replica_timeout"
UNSERVED_DROP_REASONS = frozenset({NO_REPLICA, NO_REPLICA_TIMEOUT})


@dataclass(frozen=True, slots=True)
class FleetEvent:
    kind: EventKind
    time_s: float
    model: str | None = None
    worker_id: str | None = None
    detail: str = ""


def group_id(model: str, slo_class: str, window_start_s: float) -> str:
    """Id of the request group (model, SLO class, arrival window)."""
    return f"{model}|{slo_class}|{window_start_s:.0f}"


@dataclass(frozen=True, slots=True)
class RequestGroup:
    """Waiting requests of one (model, SLO class, arrival window): the unit the queue planner orders (QLM)."""

    group_id: str
    model: str
    slo_class: str
    window_start_s: float
    num_requests: int
    prompt_tokens: int  # sum over the group
    earliest_arrival_s: float
    deadline_s: float  # earliest TTFT deadline in the group (inf for offline classes)
    replica_id: str | None = None  # where the group waits; None: at the fleet router
    request_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RunningRequest:
    """A request a replica is decoding now: what the queue planner needs to re-estimate it or evict it."""

    request_id: int
    replica_id: str
    model: str
    slo_class: str
    prompt_tokens: int
    generated_tokens: int  # output tokens produced so far
    started_s: float  # when it was admitted to the batch


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """Recent observed load of one model (over the state's observation window)."""

    model: str
    request_rate_per_s: float
    prompt_tokens_mean: float
    output_tokens_mean: float  # of completed requests
    last_arrival_s: float | None
    num_waiting: int = 0
    num_running: int = 0


@dataclass(frozen=True)
class FleetState:
    """A snapshot a planner plans from. Built by the simulator or the controller; never mutated."""

    time_s: float
    workers: tuple[WorkerStatus, ...]
    current_plan: Plan | None = None
    groups: tuple[RequestGroup, ...] = ()
    load: dict[str, ModelLoad] = field(default_factory=dict)
    events: tuple[FleetEvent, ...] = ()  # since the previous plan
    running: tuple[RunningRequest, ...] = ()  # requests being decoded (optional; the queue planner uses them)
    observation_window_s: float = 60.0
    # A controller whose stored plans run ahead of `current_plan` (advisory plans never applied, failed ones) sets
    # the next generation so that revisions keep increasing across every plan it stores; None: derived.
    next_generation: int | None = None

    @property
    def healthy_gpu_ids(self) -> list[str]:
        return [w.worker_id for w in self.workers if w.healthy]

    @property
    def generation(self) -> int:
        """Generation of the next plan: `next_generation` when set, else one past the current plan's."""
        if self.next_generation is not None:
            return self.next_generation
        return self.current_plan.generation + 1 if self.current_plan else 0

    def worker(self, worker_id: str) -> WorkerStatus | None:
        return next((w for w in self.workers if w.worker_id == worker_id), None)
