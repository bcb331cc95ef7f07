"""Initial schema: fleets and their versions, request telemetry, forecasts, plans and their actions, replanning
runs, API tokens, what-if runs, leases and worker snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Frozen: this file does not import the models, so it builds the same tables whatever the models become.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _fleet_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], name=f"fk_{table}_fleet_id_fleets", ondelete="CASCADE")


def _check_in(table: str, column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    listed = ", ".join(repr(v) for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=f"ck_{table}_{column}")


def upgrade() -> None:
    op.create_table(
        "fleets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_fleets"),
        sa.UniqueConstraint("name", name="uq_fleets_name"),
    )
    op.create_table(
        "fleet_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_sha256", sa.String(64), nullable=False),
        _ts("created_at"),
        _fleet_fk("fleet_versions"),
        sa.PrimaryKeyConstraint("id", name="pk_fleet_versions"),
        sa.UniqueConstraint("fleet_id", "version", name="uq_fleet_versions_fleet_id_version"),
    )
    op.create_table(
        "request_telemetry",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("slo_class", sa.String(64), nullable=False),
        sa.Column("arrival_s", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("ttft_s", sa.Float(), nullable=True),
        sa.Column("tpot_s", sa.Float(), nullable=True),
        sa.Column("e2e_s", sa.Float(), nullable=True),
        sa.Column("finish_s", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("drop_reason", sa.String(200), nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("replica_id", sa.String(128), nullable=True),
        _check_in("request_telemetry", "outcome", ("completed", "dropped", "rejected", "cancelled", "unknown")),
        _fleet_fk("request_telemetry"),
        sa.PrimaryKeyConstraint("id", name="pk_request_telemetry"),
    )
    op.create_index(
        "ix_request_telemetry_fleet_id_arrival_s_model", "request_telemetry", ["fleet_id", "arrival_s", "model"]
    )
    op.create_table(
        "forecasts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("series", sa.String(128), nullable=False),
        sa.Column("quantity", sa.String(16), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ts("created_at"),
        _fleet_fk("forecasts"),
        sa.PrimaryKeyConstraint("id", name="pk_forecasts"),
    )
    op.create_index("ix_forecasts_fleet_id_series_created_at", "forecasts", ["fleet_id", "series", "created_at"])
    op.create_table(
        "plans",
        sa.Column("plan_id", sa.String(128), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("fleet_version", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.String(128), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("advisory", sa.Boolean(), nullable=False),
        sa.Column("created_at_s", sa.Float(), nullable=False),
        sa.Column("input_digest", sa.String(64), nullable=False),
        sa.Column("expected", sa.JSON(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ts("stored_at"),
        _ts("updated_at"),
        _check_in("plans", "status", ("proposed", "approved", "applying", "applied", "failed", "superseded")),
        sa.ForeignKeyConstraint(
            ["fleet_id", "fleet_version"], ["fleet_versions.fleet_id", "fleet_versions.version"],
            name="fk_plans_fleet_version_fleet_versions",
        ),
        _fleet_fk("plans"),
        sa.ForeignKeyConstraint(["parent_id"], ["plans.plan_id"], name="fk_plans_parent_id_plans", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("plan_id", name="pk_plans"),
    )
    op.create_index("ix_plans_fleet_id_generation", "plans", ["fleet_id", "generation"])
    op.create_index("ix_plans_fleet_id_status", "plans", ["fleet_id", "status"])
    op.create_table(
        "plan_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("depends_on", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_message", sa.Text(), nullable=True),
        sa.Column("worker_revision", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        _check_in(
            "plan_actions", "status", ("pending", "started", "applied", "deferred", "stale", "conflict", "failed")
        ),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.plan_id"], name="fk_plan_actions_plan_id_plans", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_plan_actions"),
        sa.UniqueConstraint("idempotency_key", name="uq_plan_actions_idempotency_key"),
        sa.UniqueConstraint("plan_id", "seq", name="uq_plan_actions_plan_id_seq"),
    )
    op.create_table(
        "replan_runs",
        sa.Column("cycle_id", sa.String(128), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(128), nullable=True),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        sa.Column("inputs_digest", sa.String(64), nullable=True),
        sa.Column("forecast_ids", sa.JSON(), nullable=False),
        sa.Column("plan_id", sa.String(128), nullable=True),
        sa.Column("timings_s", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _check_in("replan_runs", "outcome", ("running", "planned", "unchanged", "skipped", "failed")),
        _fleet_fk("replan_runs"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.plan_id"], name="fk_replan_runs_plan_id_plans", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("cycle_id", name="pk_replan_runs"),
    )
    op.create_index("ix_replan_runs_fleet_id_started_at", "replan_runs", ["fleet_id", "started_at"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("last_used_at", nullable=True),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("secret_sha256", name="uq_api_tokens_secret_sha256"),
    )
    op.create_table(
        "whatif_runs",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        _check_in("whatif_runs", "status", ("queued", "running", "succeeded", "failed")),
        sa.PrimaryKeyConstraint("run_id", name="pk_whatif_runs"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "worker_snapshots",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("time_s", sa.Float(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ts("recorded_at"),
        _fleet_fk("worker_snapshots"),
        sa.PrimaryKeyConstraint("id", name="pk_worker_snapshots"),
    )
    op.create_index(
        "ix_worker_snapshots_fleet_id_worker_id_time_s", "worker_snapshots", ["fleet_id", "worker_id", "time_s"]
    )


def downgrade() -> None:
    for table in (
        "worker_snapshots", "leases", "whatif_runs", "api_tokens", "replan_runs", "plan_actions", "plans",
        "forecasts", "request_telemetry", "fleet_versions", "fleets",
    ):
        op.drop_table(table)
