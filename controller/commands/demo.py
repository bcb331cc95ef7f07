"""`fleetwise demo`: the whole loop on the embedded default — see controller/demo/run.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from controller.console import err, out, print_json


def demo(
    duration: Annotated[float, typer.Option("--duration", help="Trace seconds replayed.", min=10)] = 600.0,
    history: Annotated[float, typer.Option("--history", help="Trace seconds stored as history first.", min=60)] = 600.0,
    speedup: Annotated[float, typer.Option(help="Demo seconds per wall second.", min=0.1, max=1000)] = 10.0,
    workload: Annotated[Path | None, typer.Option(help="Trace or workload YAML (default: the Azure conversation "
                                                  "trace if ../shared is present, else the bundled chat mix).")]
    = None,
    rate_scale: Annotated[float, typer.Option(help="Multiply the trace's request rate.", min=0.01, max=20)] = 1.0,
    cron: Annotated[str, typer.Option(help="Replanning cron, wall clock (6 fields: seconds first).")]
    = "*/5 * * * * *",
    policy: Annotated[str, typer.Option(help="Planner: fleetwise, dedicated, muxserve, qlm, prism.")] = "fleetwise",
    budget: Annotated[float, typer.Option("--budget", help="Planner budget per cycle, seconds.", min=0.1)] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of the workload mapping and routing.")] = 0,
    database: Annotated[Path | None, typer.Option("--database", help="SQLite file to keep (default: a temporary "
                                                  "one).")] = None,
    warmup: Annotated[float, typer.Option("--warmup", help="Demo seconds before the replay in which the first "
                                          "plan is made and its replicas load (0: a cold fleet).", min=0)] = 60.0,
    spot: Annotated[bool, typer.Option("--spot", help="Add a pool of 4 spot L4s; the provider reclaims 3 of them "
                                       "mid-replay and returns them later (the closing simulations add SpotServe's "
                                       "reactive controller).")] = False,
    no_compare: Annotated[bool, typer.Option("--no-compare", help="Skip the closing simulations.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (tables go to stderr).")]
    = False,
) -> None:
    """Run the whole loop: API, cron replanning, executor, simulated GPUs and two CPU engines, a trace replayed."""
    from controller.demo.run import Demo, DemoOptions
    from controller.replan.cron import cron_trigger
    from controller.settings import POLICIES
    from core.errors import InputError

    if policy not in POLICIES:
        raise InputError("--policy", policy, f"one of {', '.join(POLICIES)}")
    try:
        cron_trigger(cron)
    except ValueError as exc:
        raise InputError("--cron", cron, str(exc)) from None
    if workload is not None and not workload.exists():
        raise InputError("--workload", str(workload), "an existing trace file or workload YAML")
    options = DemoOptions(workload=workload, duration_s=duration, history_s=history, speedup=speedup,
                          rate_scale=rate_scale, cron=cron, policy=policy, budget_s=budget, seed=seed,
                          database=database, compare=not no_compare, spot=spot, warmup_s=warmup)
    summary = Demo(options, err if json_out else out).run()
    if json_out:
        print_json(summary)
