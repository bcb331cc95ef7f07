"""Alembic environment and revisions for the `db` schema. Run through `db.migrate`, never with a hand-written
alembic.ini: the URL and metadata come from the caller."""
