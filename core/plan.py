"""The Plan: a versioned, explainable target state for a fleet and the ordered actions that reach it.

Plans are immutable; a new plan names its parent. `generation` increases by one per plan of a fleet and is the
`revision` of every action in it (see core.actions).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from core.actions import Action, Residency

_FROZEN = ConfigDict(frozen=True, extra="forbid")
Fraction = Annotated[float, Field(ge=0, le=1)]


class Replica(BaseModel):
    """One serving instance of a model on a TP group of GPUs."""

    model_config = _FROZEN
    replica_id: str = Field(description="Stable across plans while the replica lives, e.g. 'chat-8b@h100/0'.")
    model: str
    pool: str
    gpu_type: str
    gpu_ids: tuple[str, ...] = Field(min_length=1, description="TP group, leader first, all on one node.")
    tp: Annotated[int, Field(ge=1, le=16)] = 1
    kv_share_gib: Annotated[float, Field(ge=0)] = Field(description="KV memory per GPU the replica may use.")
    residency: Residency = Residency.ACTIVE

    @property
    def leader(self) -> str:
        return self.gpu_ids[0]


class Outcome(BaseModel):
    """Predicted (or observed) service over the plan's horizon."""

    model_config = _FROZEN
    slo_attainment: Fraction = Field(description="Fraction of requests meeting both TTFT and TPOT targets.")
    per_class: dict[str, Fraction] = Field(default={}, description="SLO class → attainment.")
    goodput_tokens_per_s: Annotated[float, Field(ge=0)] = 0.0
    gpu_hours: Annotated[float, Field(ge=0)] = 0.0
    cost_usd: Annotated[float, Field(ge=0)] = 0.0
    unmet_requests_per_s: Annotated[float, Field(ge=0)] = 0.0


class ScenarioOutcome(Outcome):
    scenario: int
    weight: Fraction


class Expected(BaseModel):
    """Outcome per scenario and their weighted mean."""

    model_config = _FROZEN
    overall: Outcome
    scenarios: tuple[ScenarioOutcome, ...] = ()


class SolverStats(BaseModel):
    """How the plan was computed."""

    model_config = _FROZEN
    name: str = Field(description="e.g. 'highs', 'cp-sat', 'greedy', 'edf+local-search'.")
    status: str = Field(description="optimal | feasible | time_limit | heuristic | infeasible-relaxed …")
    objective: float | None = None
    gap: float | None = Field(default=None, description="Relative MIP gap at termination.")
    time_s: Annotated[float, Field(ge=0)] = 0.0
    num_variables: int = 0
    num_constraints: int = 0
    warm_start: str | None = Field(default=None, description="What seeded the search, if anything.")
    stages: dict[str, float] = Field(default={}, description="Stage name → seconds (forecast, placement, …).")


class Plan(BaseModel):
    """A fleet's target state and the actions to reach it. Immutable."""

    model_config = _FROZEN
    plan_id: str
    parent_id: str | None = None
    fleet: str
    policy: str = Field(description="Planner that made it: fleetwise, dedicated, muxserve, qlm, prism, oracle …")
    generation: Annotated[int, Field(ge=0)] = 0
    created_at_s: float = Field(description="Clock time of creation (simulated seconds or the wall epoch).")
    horizon_s: Annotated[float, Field(ge=0)] = 0.0
    input_digest: str = Field(default="", description="Digest of the state, forecast and scenarios planned on.")
    replicas: tuple[Replica, ...] = ()
    routing: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(
        default={}, description="model → replica_id → weight."
    )
    queues: dict[str, tuple[str, ...]] = Field(default={}, description="replica_id → RequestGroup ids in order.")
    actions: tuple[Action, ...] = ()
    expected: Expected | None = None
    solver: SolverStats
    reasons: tuple[str, ...] = Field(default=(), description="Plan-level explanations (what changed and why).")

    def replicas_of(self, model: str) -> list[Replica]:
        return [r for r in self.replicas if r.model == model]

    def replica(self, replica_id: str) -> Replica | None:
        return next((r for r in self.replicas if r.replica_id == replica_id), None)

    def action_counts(self) -> dict[str, int]:
        return dict(Counter(a.kind for a in self.actions))

    @property
    def num_gpus(self) -> int:
        return len({g for r in self.replicas if r.residency == Residency.ACTIVE for g in r.gpu_ids})


def make_plan_id(fleet: str, policy: str, generation: int, input_digest: str) -> str:
    """Deterministic plan id, so seeded simulations produce identical plans and logs."""
    text = f"{fleet}\x1f{policy}\x1f{generation}\x1f{input_digest}"
    return f"{policy}-{generation}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def digest(*parts: object) -> str:
    """Stable short digest of reprs (numpy arrays by bytes) for `Plan.input_digest`."""
    h = hashlib.sha256()
    for p in parts:
        data = getattr(p, "tobytes", None)
        h.update(data() if callable(data) else repr(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:16]
