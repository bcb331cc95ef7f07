"""Engine factory: URL checking, SQLite pragmas, PostgreSQL reconnection after the server drops connections."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core.errors import InputError
from db.engine import make_engine, parse_url
from tests.db.conftest import SchemaFactory


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url", "postgresql+psycopg2://u@h/db", "oracle://h"])
def test_unsupported_urls_are_input_errors_naming_the_url(url: str) -> None:
    with pytest.raises(InputError) as info:
        parse_url(url)
    assert info.value.where == "database_url"
    assert "sqlite:///PATH" in info.value.allowed and "postgresql+psycopg://" in info.value.allowed


def test_password_is_hidden_in_errors() -> None:
    with pytest.raises(InputError) as info:
        parse_url("mysql://user:hunter2@host/db")
    assert "hunter2" not in str(info.value)


def test_bare_postgresql_urls_use_psycopg3() -> None:
    assert parse_url("postgresql://u:p@h:5432/db").drivername == "postgresql+psycopg"
    assert parse_url("sqlite:///x.db").drivername == "sqlite"


def test_sqlite_connections_get_wal_foreign_keys_and_a_busy_timeout(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    engine.dispose()


def test_postgres_pool_survives_the_server_dropping_its_connections(pg_schemas: SchemaFactory) -> None:
    """What a database restart looks like to the pool: every pooled connection is dead. `pool_pre_ping` must
    replace them so the next query succeeds."""
    url = pg_schemas.new_url()
    engine = make_engine(url)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    killer = make_engine(url)
    with killer.begin() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    killer.dispose()
    with engine.connect() as conn:  # the pooled connection is dead; pre-ping notices and reconnects
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    engine.dispose()
