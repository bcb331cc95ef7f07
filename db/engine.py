"""Engines and sessions for the two supported backends.

- SQLite (the embedded default, `sqlite:///./fleetwise.db`): WAL journal so readers never block the writer,
  `foreign_keys=ON`, `synchronous=FULL` so a committed transaction survives a crash of the machine as well as of
  the process (the action log promises "durable when it returns"; bulk ingest commits rarely, so the fsync per
  commit costs little), and a busy timeout so concurrent writers wait for the lock instead of failing at once.
- PostgreSQL (production) through psycopg 3 (`postgresql+psycopg://`; a bare `postgresql://` is read the same
  way). `pool_pre_ping` checks a pooled connection before handing it out, so a restarted server costs the next
  request one reconnect, not an error; `pool_recycle` retires connections older than half an hour.

Every URL is checked here: a malformed one or another backend is an `InputError` that names the URL and what is
allowed. Passwords are never echoed back in messages.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import InputError

DEFAULT_URL = "sqlite:///./fleetwise.db"
ALLOWED_URLS = "sqlite:///PATH (a file) or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_POOL_SIZE = 5
PG_MAX_OVERFLOW = 10
PG_POOL_RECYCLE_S = 1800


def parse_url(url: str | URL, *, where: str = "database_url") -> URL:
    """Parse and normalise a database URL; `InputError` (naming `where`) for anything we cannot serve."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InputError(where, str(url), ALLOWED_URLS, problem=f"{str(url)!r} is not a database URL") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    shown = parsed.render_as_string(hide_password=True)
    raise InputError(where, shown, ALLOWED_URLS, problem=f"backend {parsed.drivername!r} is not supported")


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An engine for `url` with the settings described in the module docstring."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        parsed, echo=echo, pool_pre_ping=True, pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW,
        pool_recycle=PG_POOL_RECYCLE_S,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for repository calls. Use `with factory.begin() as session:` so that a block either commits as a
    whole or rolls back as a whole; objects stay readable after commit (`expire_on_commit=False`)."""
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    finally:
        cur.close()


def is_sqlite(engine_or_session: Engine | Session) -> bool:
    bind = engine_or_session.get_bind() if isinstance(engine_or_session, Session) else engine_or_session
    return bind.dialect.name == "sqlite"
