"""`fleetwise db upgrade` and `fleetwise db current`: bring a database to the schema of this version, and say
where it stands. The URL comes from `--url`, else `FLEETWISE_DATABASE_URL`, else the embedded SQLite file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from controller.console import fail, out, print_json
from core.errors import InputError

app = typer.Typer(help="Database: migrate to the current schema, show the schema revision.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Database URL (default: $FLEETWISE_DATABASE_URL, else sqlite:///./fleetwise.db)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
T = TypeVar("T")


@app.command("upgrade")
def upgrade(
    url: UrlOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    json_out: JsonOption = False,
) -> None:
    """Create or migrate the database's tables to REVISION (default: the newest). Safe to run repeatedly."""
    from alembic.util import CommandError

    from db import migrate

    target = _url(url)
    before = _reach(target, lambda: migrate.current_revision(target))
    allowed = (f"'head' or a known revision at or after the database's own ({before or 'none'}); the newest is "
               f"{migrate.head_revision()}")
    if not revision.strip():  # Alembic asserts on an empty revision rather than saying what is wrong
        raise InputError("--revision", revision, allowed)
    try:
        after = _reach(target, lambda: migrate.upgrade(target, revision=revision))
    except CommandError as exc:  # a revision Alembic cannot find or cannot upgrade to
        raise InputError("--revision", revision, allowed, problem=str(exc).strip().splitlines()[0]) from None
    if json_out:
        print_json({"url": _shown(target), "from": before, "to": after})
        return
    change = "already at" if before == after else f"{before or 'empty'} →"
    out.print(f"[green]✓[/] {_shown(target)}: {change} revision [bold]{after}[/]")


@app.command("current")
def current(url: UrlOption = None, json_out: JsonOption = False) -> None:
    """Show the database's schema revision and whether it is the newest this version knows."""
    from db import migrate

    target = _url(url)
    at = _reach(target, lambda: migrate.current_revision(target))
    head = migrate.head_revision()
    if json_out:
        print_json({"url": _shown(target), "current": at, "head": head, "up_to_date": at == head})
        return
    state = "[green]up to date[/]" if at == head else "[yellow]behind: run `fleetwise db upgrade`[/]"
    out.print(f"{_shown(target)}: revision [bold]{at or 'none (empty database)'}[/], newest {head} — {state}")


def _url(url: str | None) -> str:
    from controller.settings import load_settings
    from db.engine import parse_url

    chosen = url if url is not None else load_settings().database_url
    parse_url(chosen, where="--url" if url is not None else "FLEETWISE_DATABASE_URL")
    return chosen


def _shown(url: str) -> str:
    from db.engine import parse_url

    return parse_url(url).render_as_string(hide_password=True)


def _reach(url: str, call: Callable[[], T]) -> T:
    """Run a database call; an unreachable or unusable database (not a database file, tables missing) is one line
    and exit code 1, not a traceback."""
    from sqlalchemy.exc import DatabaseError

    try:
        return call()
    except DatabaseError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):  # SQLite, PostgreSQL
            reason += " (the database has no fleetwise tables yet: run `fleetwise db upgrade`)"
        fail(f"cannot use database {_shown(url)}: {reason}", code=1)
        raise  # unreachable: fail() exits
