"""`fleetwise serve`: the plan API, cron replanning and the executor in one process (uvicorn on HOST:PORT)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from controller.commands.db import UrlOption, _shown, _url
from controller.console import fail, out
from core.errors import InputError

if TYPE_CHECKING:
    from controller.runtime import Controller

CronOption = Annotated[str | None, typer.Option("--cron", help="Replanning cron (5 fields, or 6 with seconds "
                                                "first); default $FLEETWISE_REPLAN_CRON, else every 5 minutes.")]
_OPTION_OF_SETTING = {"replan_cron": "--cron", "workers_file": "--workers-file"}  # settings given as options
WorkersOption = Annotated[Path | None, typer.Option("--workers-file", help="YAML naming each fleet's executor "
                                                    "backend (default $FLEETWISE_WORKERS_FILE).")]


def open_controller(url: str | None, **overrides: object) -> Controller:
    """A Controller on the database at `url` (or the settings'), which must be migrated to this version's schema:
    otherwise one line and exit code 1."""
    from sqlalchemy.exc import DatabaseError

    from controller.runtime import Controller
    from controller.settings import ENV_PREFIX, load_settings
    from db.migrate import current_revision, head_revision

    target = _url(url)
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = load_settings(database_url=target, **given)
    except InputError as exc:  # a value from an option: name the option, not the environment variable
        field = exc.where.removeprefix(ENV_PREFIX).lower()
        if field not in given or field not in _OPTION_OF_SETTING:
            raise
        raise InputError(_OPTION_OF_SETTING[field], exc.value, exc.allowed) from None
    try:
        at = current_revision(target)
    except DatabaseError as exc:
        fail(f"cannot use database {_shown(target)}: {str(exc.orig).strip().splitlines()[0]}", code=1)
    if at != head_revision():
        fail(f"database {_shown(target)} is at revision {at or 'none'}, this version needs {head_revision()}: run "
             f"`fleetwise db upgrade`", code=1)
    return Controller(settings)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed at start).", min=0, max=65535)] = 8000,
    url: UrlOption = None,
    cron: CronOption = None,
    no_cron: Annotated[bool, typer.Option("--no-cron", help="Serve the API only; no cron replanning.")] = False,
    workers_file: WorkersOption = None,
) -> None:
    """Serve the plan API with cron replanning (under the database lease) and plan execution."""
    from controller.api.app import create_app
    from controller.replan.scheduler import ReplanScheduler
    from workers.agent import serve_in_thread

    ctl = open_controller(url, replan_cron=cron, workers_file=workers_file)
    scheduler = None if no_cron else ReplanScheduler(ctl).start()
    agent = serve_in_thread(create_app(ctl), host=host, port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    replan = "off" if scheduler is None else f"cron {ctl.settings.replan_cron!r} as {ctl.settings.holder}"
    out.print(f"fleetwise controller on {_shown(ctl.settings.database_url)}; replanning {replan}")
    out.print(f"LISTENING {agent.url}", highlight=False, soft_wrap=True)
    try:
        while not stop.is_set() and agent.thread.is_alive():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if scheduler is not None:
            scheduler.stop()
        agent.stop()
        ctl.close()
