"""Controller settings from the environment (`FLEETWISE_*` variables), read with pydantic-settings.

| variable                  | setting        | default                    |
|---------------------------|----------------|----------------------------|
| `FLEETWISE_DATABASE_URL`  | `database_url` | `sqlite:///./fleetwise.db` |

Settings are frozen once read. Other packages never read them: the controller passes values in (e.g. the URL to
`db.engine.make_engine`). A bad value is an `InputError` naming the variable.
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import InputError

ENV_PREFIX = "FLEETWISE_"


class Settings(BaseSettings):
    """Everything the controller reads from its environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite:///./fleetwise.db",
        description="SQLAlchemy URL of the database: sqlite:///PATH (embedded, the default, a file relative to the "
        "working directory) or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE.",
    )


def load_settings() -> Settings:
    """Read the settings now; an invalid variable becomes an `InputError` naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "environment"
        raise InputError(name, err.get("input"), str(err["msg"])) from None
