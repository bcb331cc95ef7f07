"""API tokens. A token's secret is shown once, when it is created; the database keeps only its sha256, so a
leaked database does not leak credentials.

Scopes: `read` (GET everything), `plan` (also create, approve and apply plans), `admin` (also fleets and tokens).
Each scope includes the ones before it (`allows`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InputError, NotFoundError
from db.models import TOKEN_SCOPES, ApiTokenRow, utcnow
from db.rows import add_row

SECRET_PREFIX = "fw_"  # makes fleetwise secrets recognisable to secret scanners
SECRET_BYTES = 32


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(session: Session, *, name: str, scopes: Collection[str]) -> tuple[ApiTokenRow, str]:
    """Create token `name` with `scopes`; returns the row and the secret (which is not stored anywhere)."""
    bad = next((s for s in scopes if s not in TOKEN_SCOPES), None)
    if bad is not None or not scopes:
        raise InputError("scopes", bad if bad is not None else list(scopes), f"one or more of {', '.join(TOKEN_SCOPES)}")
    if not name or session.scalar(select(ApiTokenRow.id).where(ApiTokenRow.name == name)) is not None:
        raise InputError("name", name, "a new, non-empty token name", problem=f"token name {name!r} is taken or empty")
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    scopes_in_order = sorted(set(scopes), key=TOKEN_SCOPES.index)
    return add_row(session, ApiTokenRow(name=name, secret_sha256=hash_secret(secret), scopes=scopes_in_order)), secret


def authenticate_token(session: Session, *, secret: str) -> ApiTokenRow | None:
    """The live (not revoked) token whose secret this is, with `last_used_at` updated; None otherwise."""
    row = session.scalar(select(ApiTokenRow).where(ApiTokenRow.secret_sha256 == hash_secret(secret)))
    if row is None or row.revoked_at is not None:
        return None
    row.last_used_at = utcnow()
    session.flush()
    return row


def allows(row: ApiTokenRow, scope: str) -> bool:
    """Whether the token may act with `scope` (a higher scope includes the lower ones)."""
    if scope not in TOKEN_SCOPES:
        raise InputError("scope", scope, f"one of {', '.join(TOKEN_SCOPES)}")
    return max((TOKEN_SCOPES.index(s) for s in row.scopes), default=-1) >= TOKEN_SCOPES.index(scope)


def revoke_token(session: Session, *, name: str) -> ApiTokenRow:
    """Revoke token `name` (idempotent: a revoked token keeps its first revocation time)."""
    row = session.scalar(select(ApiTokenRow).where(ApiTokenRow.name == name))
    if row is None:
        raise NotFoundError("token", name, list(session.scalars(select(ApiTokenRow.name))))
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def list_tokens(session: Session) -> list[ApiTokenRow]:
    return list(session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name)))
