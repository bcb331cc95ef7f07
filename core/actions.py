"""Actions a plan orders on workers, and what applying one returns.

An `Action` is addressed to one worker (a GPU id such as `h100/3`) or, with `worker_id=None`, to the fleet router.
Replicas with TP > 1 are driven through their leader, the first GPU of `gpu_ids`: the leader's backend
reserves memory on the other GPUs of the group.

Revisions and idempotency (the contract every WorkerClient implements):
- `idempotency_key` is `"<plan_id>:<seq>"`. Applying an action whose key the worker has already applied returns the
  recorded result again and changes nothing, so an executor that restarts may safely re-send.
- `revision` is the fleet's plan generation (monotonic across plans). A worker keeps, per target (model, replica or
  request set), the revision that last changed it: an action with a lower revision is `stale`; the same revision
  with different arguments is a `conflict`; a shrink that cannot complete yet (KV pages in use) is `deferred` and
  finishes as pages free.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Residency(StrEnum):
    """Where a model's weights are: on the GPU (serving), in host memory (warm), or only on disk (cold)."""

    ACTIVE = "active"
    HOST = "host"
    COLD = "cold"


class PreemptMode(StrEnum):
    """How running requests give up their KV: copy it to host (swap) or drop it and recompute later."""

    SWAP = "swap"
    RECOMPUTE = "recompute"


class ActivateModel(BaseModel):
    """Load a replica's weights onto its GPUs (from host memory or from disk) and start serving it."""

    model_config = _FROZEN
    kind: Literal["activate_model"] = "activate_model"
    model: str
    replica_id: str
    tp: Annotated[int, Field(ge=1, le=16)] = 1
    gpu_ids: tuple[str, ...] = Field(min_length=1, description="GPUs of the TP group; the first is the leader.")
    kv_limit_gib: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, description="Per-GPU KV memory limit; None: no limit beyond the shared pool."
    )


class DeactivateModel(BaseModel):
    """Stop serving a replica; keep its weights in host memory (`to=host`) or drop them (`to=cold`)."""

    model_config = _FROZEN
    kind: Literal["deactivate_model"] = "deactivate_model"
    model: str
    replica_id: str
    to: Literal[Residency.HOST, Residency.COLD] = Residency.HOST
    drain: bool = Field(default=True, description="Finish running requests first (make-before-break).")


class ResizeKV(BaseModel):
    """Set a replica's per-GPU KV limit. Shrinking below the pages in use is deferred until they free."""

    model_config = _FROZEN
    kind: Literal["resize_kv"] = "resize_kv"
    replica_id: str
    kv_limit_gib: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class SetRouting(BaseModel):
    """Fleet router: the share of a model's new requests each replica receives (weights are normalised)."""

    model_config = _FROZEN
    kind: Literal["set_routing"] = "set_routing"
    model: str
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(description="replica_id → weight.")


class SetQueueOrder(BaseModel):
    """How a replica orders its waiting requests.

    `policy=explicit`: pull request groups in `group_ids` order (a QLM virtual queue); groups not listed come
    after, FCFS. The other policies are local rules the worker applies on its own: `fcfs` (arrival order),
    `priority` (SLO class priority, then arrival), `edf` (earliest TTFT deadline first; Prism's per-GPU queue).
    """

    model_config = _FROZEN
    kind: Literal["set_queue_order"] = "set_queue_order"
    replica_id: str
    policy: Literal["explicit", "fcfs", "priority", "edf"] = "explicit"
    group_ids: tuple[str, ...] = Field(default=(), description="RequestGroup ids, first pulled first (explicit).")


class EvictRequests(BaseModel):
    """Preempt running requests of a replica (to make room for more urgent work)."""

    model_config = _FROZEN
    kind: Literal["evict_requests"] = "evict_requests"
    replica_id: str
    request_ids: tuple[int, ...] = ()
    group_ids: tuple[str, ...] = Field(default=(), description="Evict every running request of these groups.")
    slo_classes: tuple[str, ...] = Field(
        default=(), description="Evict every running request of these SLO classes (QLM's eviction of lower-priority "
                                "work, when the planner cannot see which requests run)."
    )
    mode: PreemptMode = PreemptMode.RECOMPUTE


class SwapOutKV(BaseModel):
    """Copy the KV of the given requests to host memory and free their device pages."""

    model_config = _FROZEN
    kind: Literal["swap_out_kv"] = "swap_out_kv"
    replica_id: str
    request_ids: tuple[int, ...] = Field(min_length=1)


class SwapInKV(BaseModel):
    """Bring swapped-out KV back onto the device so the requests continue."""

    model_config = _FROZEN
    kind: Literal["swap_in_kv"] = "swap_in_kv"
    replica_id: str
    request_ids: tuple[int, ...] = Field(min_length=1)


class PreemptOffline(BaseModel):
    """Pause offline (batch) requests; their KV is already checkpointed to host, so nothing is recomputed."""

    model_config = _FROZEN
    kind: Literal["preempt_offline"] = "preempt_offline"
    replica_id: str
    request_ids: tuple[int, ...] = Field(default=(), description="Empty: every running offline request.")
    free_kv_tokens: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Preempt only until this many KV tokens are free (None: all listed)."
    )


class ResumeOffline(BaseModel):
    """Resume paused offline requests from their KV checkpoints."""

    model_config = _FROZEN
    kind: Literal["resume_offline"] = "resume_offline"
    replica_id: str
    request_ids: tuple[int, ...] = Field(default=(), description="Empty: every paused offline request.")


class MigrateRequests(BaseModel):
    """Move waiting (and optionally running, with their KV) requests from one replica to another."""

    model_config = _FROZEN
    kind: Literal["migrate_requests"] = "migrate_requests"
    from_replica_id: str
    to_replica_id: str
    request_ids: tuple[int, ...] = ()
    group_ids: tuple[str, ...] = ()
    include_running: bool = False


class ReconfigureParallelism(BaseModel):
    """Change a replica's TP degree or GPUs (spot preemption, liveput); in-flight KV is migrated or recomputed."""

    model_config = _FROZEN
    kind: Literal["reconfigure_parallelism"] = "reconfigure_parallelism"
    replica_id: str
    model: str
    tp: Annotated[int, Field(ge=1, le=16)]
    gpu_ids: tuple[str, ...] = Field(min_length=1)


ActionArgs = Annotated[
    (ActivateModel | DeactivateModel | ResizeKV | SetRouting | SetQueueOrder | EvictRequests | SwapOutKV | SwapInKV
     | PreemptOffline | ResumeOffline | MigrateRequests | ReconfigureParallelism),
    Field(discriminator="kind"),
]

ActionKind = Literal[
    "activate_model", "deactivate_model", "resize_kv", "set_routing", "set_queue_order", "evict_requests",
    "swap_out_kv", "swap_in_kv", "preempt_offline", "resume_offline", "migrate_requests",
    "reconfigure_parallelism",
]
ACTION_KINDS: tuple[str, ...] = ActionKind.__args__  # type: ignore[attr-defined]


class Action(BaseModel):
    """One step of a plan: what to do (`args`), where (`worker_id`), after what (`depends_on`), and why."""

    model_config = _FROZEN
    plan_id: str
    seq: Annotated[int, Field(ge=0)] = Field(description="Position in the plan; unique within it.")
    worker_id: str | None = Field(description="Target GPU id (leader for TP groups); None: the fleet router.")
    args: ActionArgs
    depends_on: tuple[int, ...] = Field(default=(), description="seq numbers that must succeed first.")
    revision: Annotated[int, Field(ge=0)] = Field(description="Plan generation; see the module docstring.")
    reason: str = Field(min_length=1, description="Why the planner wants this (shown to operators).")
    expected_duration_s: Annotated[float, Field(ge=0)] = 0.0
    expected_cost_usd: Annotated[float, Field(ge=0)] = 0.0

    @property
    def kind(self) -> str:
        return self.args.kind

    @property
    def idempotency_key(self) -> str:
        return f"{self.plan_id}:{self.seq}"


ApplyStatus = Literal["applied", "deferred", "stale", "conflict", "failed"]


class ApplyResult(BaseModel):
    """What a worker answered to one action."""

    model_config = _FROZEN
    idempotency_key: str
    status: ApplyStatus
    message: str = ""
    worker_revision: int = Field(default=0, description="The target's revision after this call.")
    duration_s: Annotated[float, Field(ge=0)] = Field(default=0.0, description="Time the action took (or will).")
    retriable: bool = Field(
        default=False,
        description="Only with status=failed: the cause is transient (busy, still loading), so re-sending the same "
        "action may succeed. Executors retry these and never stale or conflict answers.",
    )

    @property
    def ok(self) -> bool:
        """Applied, or accepted and completing on its own (deferred)."""
        return self.status in ("applied", "deferred")
