"""Alembic migrations driven from code: `upgrade(url)`, `current_revision(url)`, `schema_diff(url)`.

The Alembic configuration is built here (script location inside this package, URL and metadata from the caller),
so there is no alembic.ini to keep in step. `fleetwise db upgrade` calls `upgrade`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from db.engine import make_engine, parse_url
from db.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(**attributes: Any) -> Config:
    """An Alembic `Config` for this package's migrations; `attributes` reach `env.py` (see its docstring)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes.update(target_metadata=Base.metadata, **attributes)
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "db/migrations/versions holds no revision"
    return head


def upgrade(url: str | URL, *, revision: str = "head") -> str | None:
    """Migrate the database at `url` to `revision` (default: the newest); returns the revision it is at after.

    Idempotent: a database already at `revision` is left as it is. Runs in one transaction where the backend
    allows (PostgreSQL: all or nothing; SQLite: DDL commits per revision).
    """
    with _connection(url) as conn:
        command.upgrade(alembic_config(connection=conn), revision)
        return MigrationContext.configure(conn).get_current_revision()


def downgrade(url: str | URL, *, revision: str) -> str | None:
    """Migrate down to `revision` ('base': drop every table)."""
    with _connection(url) as conn:
        command.downgrade(alembic_config(connection=conn), revision)
        return MigrationContext.configure(conn).get_current_revision()


def current_revision(url: str | URL) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with _connection(url) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def new_revision(url: str | URL, *, message: str) -> None:
    """Write a new revision into `db/migrations/versions/` from the difference between the models and the database
    at `url` (which must be at head). For developers changing the models; review the file before committing."""
    with _connection(url) as conn:
        command.revision(alembic_config(connection=conn), message=message, autogenerate=True)


def schema_diff(url: str | URL) -> list[Any]:
    """Differences between the database's schema and the models (Alembic autogenerate); [] when they agree."""
    with _connection(url) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


@contextmanager
def _connection(url: str | URL) -> Iterator[Connection]:
    engine: Engine = make_engine(parse_url(url))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()
