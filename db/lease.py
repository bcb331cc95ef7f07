"""Named leases, so that exactly one of several controllers replans per tick.

`acquire_lease` is one conditional upsert — `INSERT … ON CONFLICT (name) DO UPDATE … WHERE the lease is mine or
has expired RETURNING holder` — which both SQLite (≥ 3.35) and PostgreSQL execute atomically: of two controllers
racing for a free lease, one inserts and the other's update finds the condition false and returns no row.
Commit right after acquiring (e.g. `with factory.begin() as s: acquire_lease(s, …)`): the lease is visible to
the others only once committed. Times are the caller's clock seconds (`Clock.now()`); controllers sharing a lease
must share a clock (the wall clock), and `ttl_s` must cover their clock skew.
"""

from __future__ import annotations

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.errors import InputError
from db.models import LeaseRow


def acquire_lease(session: Session, *, name: str, holder: str, ttl_s: float, now_s: float) -> bool:
    """Take lease `name` for `holder` until `now_s + ttl_s`, or renew it if `holder` has it; True on success.

    Fails (False, nothing changed) while another holder's lease has not expired.
    """
    if not ttl_s > 0:
        raise InputError("ttl_s", ttl_s, "a lease must last > 0 seconds")
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else pg_insert
    stmt = insert(LeaseRow).values(name=name, holder=holder, expires_at_s=now_s + ttl_s)
    stmt = stmt.on_conflict_do_update(
        index_elements=[LeaseRow.name],
        set_={"holder": stmt.excluded.holder, "expires_at_s": stmt.excluded.expires_at_s},
        where=or_(LeaseRow.holder == holder, LeaseRow.expires_at_s <= now_s),
    ).returning(LeaseRow.holder)
    return session.execute(stmt).first() is not None


def release_lease(session: Session, *, name: str, holder: str) -> bool:
    """Give lease `name` back if `holder` has it (expired or not); True if it was released."""
    result = session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def lease_holder(session: Session, *, name: str, now_s: float) -> str | None:
    """Who holds lease `name` at `now_s` (None if free or expired)."""
    return session.scalar(select(LeaseRow.holder).where(LeaseRow.name == name, LeaseRow.expires_at_s > now_s))
