"""The `fleetwise` command line. Each command group lives in `controller/commands/`; heavy libraries (torch, Pyomo,
statsmodels, FastAPI) are imported inside the commands, so `fleetwise --help` stays fast.

Errors a user can cause (`InputError`, `NotFoundError`) print one line and exit with code 2; Typer's own usage
errors also exit 2.
"""

from __future__ import annotations

import typer

from controller.commands import db as db_command
from controller.commands import demo as demo_command
from controller.commands import fleet, forecast, trace
from controller.commands import plan as plan_command
from controller.commands import serve as serve_command
from controller.commands import token as token_command
from controller.commands import worker as worker_command
from controller.commands.whatif import whatif
from controller.console import fail
from core.errors import InputError, NotFoundError

app = typer.Typer(
    name="fleetwise",
    help="SLO-aware control plane for GPU fleets that serve many LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(db_command.app, name="db")
app.add_typer(fleet.app, name="fleet")
app.add_typer(trace.app, name="trace")
app.add_typer(token_command.app, name="token")
app.command("serve")(serve_command.serve)
app.command("plan")(plan_command.plan)
app.command("demo")(demo_command.demo)
app.command("worker")(worker_command.worker)
app.command("profile")(worker_command.profile)
app.command("notices")(worker_command.notices)
app.command("forecast")(forecast.forecast)
app.command("whatif")(whatif)


def main() -> None:
    try:
        app()
    except (InputError, NotFoundError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
