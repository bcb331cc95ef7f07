"""`fleetwise token create | list | revoke`: API tokens. The secret is printed once, at creation; the database keeps
only its sha256."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from controller.commands.db import UrlOption, _reach, _url
from controller.console import out, print_json

app = typer.Typer(help="API tokens: create (the secret is shown once), list, revoke.", no_args_is_help=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A unique name for the token (who or what uses it).")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: read, plan, admin "
                                        "(read < plan < admin; a higher scope includes the lower).")] = "read",
    url: UrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a token and print its secret (shown this once: store it now)."""
    from db.engine import make_engine, make_sessionmaker
    from db.tokens import create_token

    target = _url(url)
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    engine = make_engine(target)
    try:
        with make_sessionmaker(engine).begin() as session:
            row, secret = _reach(target, lambda: create_token(session, name=name, scopes=wanted))
            scopes_out = list(row.scopes)
    finally:
        engine.dispose()
    if json_out:
        print_json({"name": name, "scopes": scopes_out, "secret": secret})
        return
    out.print(f"[green]✓[/] token [bold]{name}[/] ({', '.join(scopes_out)}); its secret, shown only now:")
    out.print(secret, highlight=False, soft_wrap=True)


@app.command("list")
def list_(url: UrlOption = None, json_out: JsonOption = False) -> None:
    """List tokens (names, scopes, use; never secrets)."""
    from db.engine import make_engine, make_sessionmaker
    from db.tokens import list_tokens

    target = _url(url)
    engine = make_engine(target)
    try:
        with make_sessionmaker(engine).begin() as session:
            rows = [(r.name, list(r.scopes), r.created_at, r.last_used_at, r.revoked_at)
                    for r in _reach(target, lambda: list_tokens(session))]
    finally:
        engine.dispose()
    if json_out:
        print_json([{"name": n, "scopes": s, "created_at": c, "last_used_at": u, "revoked_at": r}
                    for n, s, c, u, r in rows])
        return
    table = Table("name", "scopes", "created", "last used", "revoked", title="API tokens")
    for n, s, c, u, r in rows:
        table.add_row(n, ", ".join(s), f"{c:%Y-%m-%d %H:%M}", f"{u:%Y-%m-%d %H:%M}" if u else "never",
                      f"{r:%Y-%m-%d %H:%M}" if r else "")
    out.print(table)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Option("--name", help="The token to revoke.")], url: UrlOption = None) -> None:
    """Revoke a token: it stops working within seconds (controllers cache a check for 5 s)."""
    from db.engine import make_engine, make_sessionmaker
    from db.tokens import revoke_token

    target = _url(url)
    engine = make_engine(target)
    try:
        with make_sessionmaker(engine).begin() as session:
            _reach(target, lambda: revoke_token(session, name=name))
    finally:
        engine.dispose()
    out.print(f"[green]✓[/] token [bold]{name}[/] revoked")
