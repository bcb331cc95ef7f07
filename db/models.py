"""Tables, as SQLAlchemy 2 typed models on one `Base`. The Alembic migrations in `db/migrations/` build exactly
this schema (a test compares them on SQLite and PostgreSQL).

Conventions: record-keeping timestamps (`*_at`) are timezone-aware UTC datetimes; times that come from a
`core.protocols.Clock` (arrivals, plan creation, lease expiry) are float seconds (`*_s`), because a simulated
clock has no calendar. Payloads of core types are stored as JSON (`model_dump(mode="json")`) beside the columns
that queries filter on. Status columns carry CHECK constraints listing their allowed values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

PLAN_STATUSES = ("proposed", "approved", "applying", "applied", "failed", "superseded")
ACTION_STATUSES = ("pending", "started", "applied", "deferred", "stale", "conflict", "failed")
REQUEST_OUTCOMES = ("completed", "dropped", "rejected", "cancelled", "unknown")
REPLAN_OUTCOMES = ("running", "planned", "unchanged", "skipped", "failed")
WHATIF_STATUSES = ("queued", "running", "succeeded", "failed")
TOKEN_SCOPES = ("read", "plan", "admin")

NAME = 128  # length of names and ids (fleet, model, worker, replica, plan)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps no zone, so it is restored on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (e.g. datetime.now(UTC))")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite makes only an INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL needs 64 bits for telemetry.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """One metadata for every table; constraint names are deterministic so migrations can refer to them."""

    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class FleetRow(Base):
    """A fleet by name. Its spec lives in `FleetVersionRow`s; `current_version` is the newest (0: none yet)."""

    __tablename__ = "fleets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME), unique=True)
    current_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[FleetVersionRow]] = relationship(
        back_populates="fleet", order_by="FleetVersionRow.version", cascade="all, delete-orphan"
    )


class FleetVersionRow(Base):
    """One version of a fleet's spec. A changed spec (another digest) makes the next version."""

    __tablename__ = "fleet_versions"
    __table_args__ = (UniqueConstraint("fleet_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    version: Mapped[int]
    spec: Mapped[dict[str, Any]] = mapped_column(doc="FleetSpec.model_dump(mode='json').")
    spec_sha256: Mapped[str] = mapped_column(String(64), doc="sha256 of the canonical JSON of `spec`.")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    fleet: Mapped[FleetRow] = relationship(back_populates="versions")


class RequestTelemetryRow(Base):
    """One served (or dropped) request. Written in bulk by `db.telemetry.ingest_requests`, never one by one.

    The index (fleet_id, arrival_s, model) covers the forecasting query "counts per model per interval over a time
    range": a range scan that never reads the table itself.
    """

    __tablename__ = "request_telemetry"
    __table_args__ = (
        Index(None, "fleet_id", "arrival_s", "model"),
        CheckConstraint(_in("outcome", REQUEST_OUTCOMES), name="outcome"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    request_id: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(NAME))
    slo_class: Mapped[str] = mapped_column(String(64))
    arrival_s: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int]
    output_tokens: Mapped[int]
    ttft_s: Mapped[float | None] = mapped_column(Float)
    tpot_s: Mapped[float | None] = mapped_column(Float)
    e2e_s: Mapped[float | None] = mapped_column(Float, doc="End-to-end latency: arrival to last token.")
    finish_s: Mapped[float | None] = mapped_column(Float, doc="Clock time of the last token (or of the drop).")
    outcome: Mapped[str] = mapped_column(String(16))
    drop_reason: Mapped[str | None] = mapped_column(String(200))
    worker_id: Mapped[str | None] = mapped_column(String(NAME))
    replica_id: Mapped[str | None] = mapped_column(String(NAME))


class ForecastRow(Base):
    """One `core.forecast.Forecast` of one series, as made at `created_at`."""

    __tablename__ = "forecasts"
    __table_args__ = (Index(None, "fleet_id", "series", "created_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    series: Mapped[str] = mapped_column(String(NAME))
    quantity: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(64))
    start_s: Mapped[float] = mapped_column(Float)
    interval_s: Mapped[float] = mapped_column(Float)
    horizon: Mapped[int]
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PlanRow(Base):
    """A stored `core.plan.Plan` and where it is in its life (see `db.plans.PLAN_TRANSITIONS`)."""

    __tablename__ = "plans"
    __table_args__ = (
        ForeignKeyConstraint(
            ["fleet_id", "fleet_version"], ["fleet_versions.fleet_id", "fleet_versions.version"],
            name="fk_plans_fleet_version_fleet_versions",
        ),
        Index(None, "fleet_id", "generation"),
        Index(None, "fleet_id", "status"),
        CheckConstraint(_in("status", PLAN_STATUSES), name="status"),
    )
    plan_id: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    fleet_version: Mapped[int | None] = mapped_column(doc="Spec version planned for; None: no spec stored.")
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("plans.plan_id", ondelete="SET NULL"))
    generation: Mapped[int]
    policy: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="proposed")
    status_message: Mapped[str | None] = mapped_column(Text)
    advisory: Mapped[bool] = mapped_column(Boolean, doc="Stored, but applied only once approved.")
    created_at_s: Mapped[float] = mapped_column(Float, doc="Plan.created_at_s (the planner's clock).")
    input_digest: Mapped[str] = mapped_column(String(64))
    expected: Mapped[dict[str, Any] | None] = mapped_column(JSON, doc="Plan.expected.overall (predicted Outcome).")
    payload: Mapped[dict[str, Any]]
    stored_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    fleet: Mapped[FleetRow] = relationship()
    actions: Mapped[list[PlanActionRow]] = relationship(
        back_populates="plan", order_by="PlanActionRow.seq", cascade="all, delete-orphan"
    )


class PlanActionRow(Base):
    """One action of a plan and its life: pending → started → applied | deferred | stale | conflict | failed."""

    __tablename__ = "plan_actions"
    __table_args__ = (
        UniqueConstraint("plan_id", "seq"),
        CheckConstraint(_in("status", ACTION_STATUSES), name="status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.plan_id", ondelete="CASCADE"))
    seq: Mapped[int]
    idempotency_key: Mapped[str] = mapped_column(String(2 * NAME), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    worker_id: Mapped[str | None] = mapped_column(String(NAME))
    depends_on: Mapped[list[Any]] = mapped_column(doc="seq numbers that must succeed first.")
    payload: Mapped[dict[str, Any]] = mapped_column(doc="Action.model_dump(mode='json').")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_message: Mapped[str | None] = mapped_column(Text)
    worker_revision: Mapped[int | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, doc="The last ApplyResult, whole.")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    plan: Mapped[PlanRow] = relationship(back_populates="actions")


class ReplanRunRow(Base):
    """One replanning cycle: what triggered it, what it read, what it produced, how long each stage took."""

    __tablename__ = "replan_runs"
    __table_args__ = (
        Index(None, "fleet_id", "started_at"),
        CheckConstraint(_in("outcome", REPLAN_OUTCOMES), name="outcome"),
    )
    cycle_id: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(32), doc="cron | api | cli | event:<kind> …")
    holder: Mapped[str | None] = mapped_column(String(NAME), doc="The controller that ran the cycle.")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    inputs_digest: Mapped[str | None] = mapped_column(String(64))
    forecast_ids: Mapped[list[Any]] = mapped_column(default=list)
    plan_id: Mapped[str | None] = mapped_column(ForeignKey("plans.plan_id", ondelete="SET NULL"))
    timings_s: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="Stage name → seconds.")
    outcome: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)


class ApiTokenRow(Base):
    """A bearer token. Only the sha256 of the secret is stored; the secret is shown once, at creation."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class WhatIfRunRow(Base):
    """A what-if job run in the background: its configuration, status and report."""

    __tablename__ = "whatif_runs"
    __table_args__ = (CheckConstraint(_in("status", WHATIF_STATUSES), name="status"),)
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="queued")
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class LeaseRow(Base):
    """A named lease (e.g. 'replan'): who holds it until when (clock seconds). See `db.lease`."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(NAME))
    expires_at_s: Mapped[float] = mapped_column(Float)


class WorkerSnapshotRow(Base):
    """A `core.status.WorkerStatus` as reported at `time_s` (the planner's observed state, kept for history)."""

    __tablename__ = "worker_snapshots"
    __table_args__ = (Index(None, "fleet_id", "worker_id", "time_s"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"))
    worker_id: Mapped[str] = mapped_column(String(NAME))
    time_s: Mapped[float] = mapped_column(Float)
    healthy: Mapped[bool] = mapped_column(Boolean)
    payload: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
