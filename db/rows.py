"""Two steps every repository module takes: add a row and get its generated keys, and fetch a row by primary key
or say that it does not exist."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

from core.errors import NotFoundError
from db.models import Base

R = TypeVar("R", bound=Base)


def add_row(session: Session, row: R) -> R:
    """Add `row` and flush, so its generated keys and defaults are set (nothing is committed)."""
    session.add(row)
    session.flush()
    return row


def row_by_key(session: Session, model: type[R], key: Any, *, kind: str) -> R:
    """The `model` row with primary key `key`; `NotFoundError(kind, key)` if there is none."""
    row = session.get(model, key)
    if row is None:
        raise NotFoundError(kind, key)
    return row
