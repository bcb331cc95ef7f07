"""Database fixtures, parametrised over the backends: SQLite (a temporary file, always) and PostgreSQL (when
FLEETWISE_TEST_POSTGRES_URL is set; skipped with that reason otherwise).

Isolation under `pytest -n 2`: each xdist worker gets its own PostgreSQL schema (`search_path` in the URL), made
at the start of its session and dropped at the end; SQLite files live in the worker's temporary directory. Tests
share one migrated database per backend and worker, emptied before every test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.engine import make_engine, make_sessionmaker
from db.models import Base

PG_ENV = "FLEETWISE_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


class SchemaFactory:
    """Makes empty PostgreSQL schemas on the test server and drops them all at the end of the session."""

    def __init__(self, server_url: str, worker: str) -> None:
        self.server_url = server_url
        self.prefix = f"fwtest_{worker}_{uuid.uuid4().hex[:6]}"
        self.engine = make_engine(server_url)
        self.schemas: list[str] = []

    def new_url(self) -> str:
        schema = f"{self.prefix}_{len(self.schemas)}"
        with self.engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        self.schemas.append(schema)
        url = make_url(self.server_url).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.engine.begin() as conn:
            for schema in self.schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self.engine.dispose()


@pytest.fixture(scope="session")
def pg_schemas(worker_id: str) -> Iterator[SchemaFactory]:
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"{PG_ENV} is not set: PostgreSQL tests skipped")
    factory = SchemaFactory(server, worker_id)
    yield factory
    factory.drop_all()


def _empty_url(backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'fleetwise.db'}"
    return request.getfixturevalue("pg_schemas").new_url()


@pytest.fixture(scope="session", params=BACKENDS)
def migrated_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database per backend and worker, migrated to head once."""
    url = _empty_url(request.param, request, tmp_path_factory)
    migrate.upgrade(url)
    return url


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty database (no tables) for migration tests."""
    return _empty_url(request.param, request, tmp_path_factory)


@pytest.fixture
def db_url(migrated_url: str) -> str:
    """The migrated database of this backend, with every table emptied."""
    engine = make_engine(migrated_url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return migrated_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)
