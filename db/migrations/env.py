"""Alembic environment. The caller (`db.migrate`) passes everything through `config.attributes`:

- `connection`: an open SQLAlchemy connection inside a transaction (online mode), or
- `url`: a database URL, for offline mode (`alembic upgrade --sql`: SQL written out, nothing executed);
- `target_metadata`: the models' `MetaData` (autogenerate compares against it).

No URL is written in any file.
"""

from __future__ import annotations

from alembic import context

config = context.config
target_metadata = config.attributes["target_metadata"]


def _options(dialect_name: str) -> dict[str, object]:
    # SQLite cannot ALTER most things in place: batch mode copies the table, so later revisions work on both.
    return {"target_metadata": target_metadata, "render_as_batch": dialect_name == "sqlite", "compare_type": True}


def run_offline() -> None:
    url = config.attributes["url"]
    context.configure(url=url, literal_binds=True, **_options(url.get_backend_name()))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, **_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
