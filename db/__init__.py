"""Persistence: SQLAlchemy 2 models, repository functions, Alembic migrations, and the ActionLog
implementation. SQLite (WAL) by default, PostgreSQL by URL.

May import: core. Imported only by controller and tests.
"""
