"""What workers report: per-GPU memory and KV pages, the replicas they host, and their queues."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.actions import Residency

_FROZEN = ConfigDict(frozen=True, extra="forbid")
NonNeg = Annotated[int, Field(ge=0)]


class ReplicaStatus(BaseModel):
    """One model replica as its leader worker sees it."""

    model_config = _FROZEN
    replica_id: str
    model: str
    residency: Residency
    tp: int = 1
    gpu_ids: tuple[str, ...] = ()
    kv_limit_pages: int | None = Field(default=None, description="Per-GPU page limit; None: unlimited.")
    kv_pages_used: NonNeg = 0
    limit_revision: NonNeg = Field(default=0, description="Revision of the last limit change (see core.actions).")
    limit_pending: bool = Field(default=False, description="A shrink is deferred until pages free.")
    num_running: NonNeg = 0
    num_waiting: NonNeg = 0
    num_swapped: NonNeg = Field(default=0, description="Requests whose KV sits in host memory.")
    num_offline_paused: NonNeg = 0
    activating_until_s: float | None = Field(default=None, description="Activation in progress until this time.")
    draining: bool = Field(
        default=False, description="Deactivating with drain: takes no new requests, leaves once its running ones "
        "finish. Activating it again cancels the drain."
    )
    last_request_s: float | None = Field(default=None, description="Arrival time of the latest request.")


class WorkerStatus(BaseModel):
    """One GPU worker. Memory figures are per device; pages are the shared KV pool's."""

    model_config = _FROZEN
    worker_id: str
    pool: str
    gpu_type: str
    healthy: bool = True
    time_s: float = Field(description="The worker's clock when this status was taken.")
    memory_total_gib: float
    memory_weights_gib: float = 0.0
    kv_page_bytes: Annotated[int, Field(gt=0)] = 2 * 1024 * 1024
    kv_pages_total: NonNeg = 0
    kv_pages_used: NonNeg = 0
    host_kv_pages_used: NonNeg = Field(default=0, description="Swapped-out or checkpointed KV in host memory.")
    replicas: tuple[ReplicaStatus, ...] = Field(default=(), description="Replicas led by this worker.")
    member_of: tuple[str, ...] = Field(default=(), description="Replica ids of TP groups this GPU serves in.")
    revision: NonNeg = Field(default=0, description="Highest revision applied on this worker.")

    @property
    def kv_pages_free(self) -> int:
        return self.kv_pages_total - self.kv_pages_used


class SubmitResult(BaseModel):
    """A worker's answer to a submitted request."""

    model_config = _FROZEN
    request_id: int
    status: Literal["accepted", "queued", "rejected"] = Field(
        description="accepted: scheduled; queued: waits for its model to become active; rejected: see message."
    )
    message: str = ""
