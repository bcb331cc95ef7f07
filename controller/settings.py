"""Controller settings from the environment (`FLEETWISE_*` variables), read with pydantic-settings.

| variable                          | setting              | default                    |
|-----------------------------------|----------------------|----------------------------|
| `FLEETWISE_DATABASE_URL`          | `database_url`       | `sqlite:///./fleetwise.db` |
| `FLEETWISE_REPLAN_CRON`           | `replan_cron`        | `*/5 * * * *`              |
| `FLEETWISE_LEASE_TTL_S`           | `lease_ttl_s`        | `600`                      |
| `FLEETWISE_PLAN_BUDGET_S`         | `plan_budget_s`      | `5`                        |
| `FLEETWISE_POLICY`                | `policy`             | `fleetwise`                |
| `FLEETWISE_ADVISORY`              | `advisory`           | `false`                    |
| `FLEETWISE_HISTORY_S`             | `history_s`          | `86400`                    |
| `FLEETWISE_FORECAST_INTERVAL_S`   | `forecast_interval_s`| `300`                      |
| `FLEETWISE_FORECAST_HORIZON`      | `forecast_horizon`   | `6`                        |
| `FLEETWISE_MAX_BATCH_ROWS`        | `max_batch_rows`     | `100000`                   |
| `FLEETWISE_MAX_BODY_BYTES`        | `max_body_bytes`     | `33554432`                 |
| `FLEETWISE_WORKERS_FILE`          | `workers_file`       | none                       |
| `FLEETWISE_HOLDER`                | `holder`             | `<hostname>:<pid>`         |

Settings are frozen once read. Other packages never read them: the controller passes values in (e.g. the URL to
`db.engine.make_engine`). A bad value is an `InputError` naming the variable.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import InputError

ENV_PREFIX = "FLEETWISE_"
POLICIES = ("fleetwise", "dedicated", "muxserve", "qlm", "prism")


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Settings(BaseSettings):
    """Everything the controller reads from its environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite:///./fleetwise.db",
        description="SQLAlchemy URL of the database: sqlite:///PATH (embedded, the default, a file relative to the "
        "working directory) or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE.",
    )
    replan_cron: str = Field(
        default="*/5 * * * *",
        description="When to replan: a crontab expression of 5 fields (minute hour day month weekday) or 6 fields "
        "with seconds first (`*/10 * * * * *`: every 10 seconds).",
    )
    lease_ttl_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0, description="How long the replanning lease lasts without renewal: longer than the slowest "
        "cycle; a standby controller takes over this long after the holder died.",
    )
    plan_budget_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=5.0, description="Wall-clock budget handed to the planner per fleet and cycle."
    )
    policy: str = Field(default="fleetwise", description=f"Default planner: one of {', '.join(POLICIES)}.")
    advisory: bool = Field(
        default=False, description="Default advisory mode: plans are stored but applied only once approved. A fleet "
        "overrides it with the label `fleetwise/advisory`.",
    )
    history_s: Annotated[float, Field(gt=0)] = Field(
        default=86400.0, description="Telemetry the forecasters read, counted back from now."
    )
    forecast_interval_s: Annotated[float, Field(gt=0)] = Field(default=300.0, description="Forecast interval.")
    forecast_horizon: Annotated[int, Field(ge=1, le=288)] = Field(default=6, description="Intervals forecast.")
    num_scenarios: Annotated[int, Field(ge=1, le=1024)] = Field(default=32, description="Scenarios drawn.")
    reduce_scenarios_to: Annotated[int, Field(ge=1, le=256)] = Field(default=8, description="Scenarios kept.")
    max_batch_rows: Annotated[int, Field(ge=1)] = Field(
        default=100_000, description="Most requests in one telemetry batch; larger batches answer 413."
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=32 * 1024 * 1024, description="Largest request body accepted; larger bodies answer 413."
    )
    workers_file: Path | None = Field(
        default=None, description="YAML naming each fleet's executor backend and worker agents (docs/operations.md)."
    )
    holder: str = Field(default_factory=default_holder, description="This controller's name in the lease table.")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown policy; one of {', '.join(POLICIES)}")
        return value

    @field_validator("replan_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from controller.replan.cron import cron_trigger

        cron_trigger(value)  # raises ValueError with the reason
        return value


def load_settings(**overrides: object) -> Settings:
    """Read the settings now (keyword `overrides` win over the environment); an invalid variable becomes an
    `InputError` naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "environment"
        reason = str(err.get("ctx", {}).get("error") or err["msg"])  # a validator's own words, not "Value error, …"
        raise InputError(name, err.get("input"), reason) from None
