"""Persistence: SQLAlchemy 2 models, repository functions, Alembic migrations, and the ActionLog
implementation. SQLite (WAL) by default, PostgreSQL by URL.

- `engine`: `make_engine(url)`, `make_sessionmaker(engine)`; URL checking (`parse_url`).
- `models`: the tables (one `Base`); `migrate`: `upgrade(url)`, `current_revision(url)`, `schema_diff(url)`.
- Repositories (take a `Session`, keyword-only arguments, never commit): `fleets`, `telemetry` (columns in and
  out; `request_counts`), `ingest` (`ingest_requests`, the bulk path), `forecasts`, `plans`, `actions`, `runs`
  (replanning cycles, what-if jobs), `tokens`, `lease`, `workers`.
- `action_log.SqlActionLog`: `core.protocols.ActionLog`, one committed transaction per call.

May import: core. Imported only by controller and tests.
"""
