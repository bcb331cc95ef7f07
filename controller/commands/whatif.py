"""`fleetwise whatif`: replay a workload against a fleet under several policies in the simulator and compare SLO
attainment and cost (tables, report JSON, PNG). Heavy imports (simulator, optimizers, matplotlib) happen inside the
command so `fleetwise --help` stays fast."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from controller.console import err, out, print_json
from core.errors import InputError

if TYPE_CHECKING:
    from controller.whatif.options import WhatIfConfig

DEFAULT_POLICIES = "dedicated,muxserve,qlm,prism"


def _number(option: str, *, minimum: float, inclusive: bool, integer: bool = False) -> Callable[[str], float]:
    """A Typer parser: the option's text as a number ≥ / > `minimum`, else an InputError (one line, exit 2)."""
    bound = f"{'≥' if inclusive else '>'} {minimum:g}"
    kind = "an integer" if integer else "a finite number"

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise InputError(option, text, f"{kind} {bound}") from None
        if not (value >= minimum if inclusive else value > minimum) or not math.isfinite(value):
            raise InputError(option, text, f"{kind} {bound}")
        return value

    return parse


def whatif(
    fleet: Annotated[Path, typer.Option("--fleet", help="Fleet YAML (apiVersion: fleetwise/v1, kind: Fleet).")],
    workload: Annotated[str, typer.Option("--workload", help="Trace file (Azure, Mooncake, canonical CSV), "
                                                               "ServeGen folder, rate profile (CSV of requests/s per "
                                                               "minute) or workload YAML.")],
    policy: Annotated[str, typer.Option("--policy", help="Comma-separated policies to compare.")] = DEFAULT_POLICIES,
    report_json: Annotated[Path | None, typer.Option("--report-json", help="Write the report JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG: attainment and cost, attainment over "
                                                             "time (or attainment against load with --sweep).")] = None,
    rate_scale: Annotated[float, typer.Option("--rate-scale", parser=_number("--rate-scale", minimum=0, inclusive=False),
                                              metavar="FLOAT", help="Multiply the arrival rate.")] = 1.0,
    start: Annotated[float, typer.Option(
        "--start", parser=_number("--start", minimum=0, inclusive=True), metavar="SECONDS",
        help="Replay from this time on the workload's clock (Azure, Mooncake, ServeGen, rate profiles: seconds "
             "from its start; a canonical CSV: its times as written).")] = 0.0,
    duration: Annotated[float | None, typer.Option(
        "--duration", parser=_number("--duration", minimum=0, inclusive=False), metavar="SECONDS",
        help="Replay only this long (from --start).")] = None,
    split_models: Annotated[int | None, typer.Option(
        "--split-models", parser=_number("--split-models", minimum=1, inclusive=True, integer=True), metavar="N",
        help="Split the traffic over the fleet's first N models by Zipf popularity.")] = None,
    zipf: Annotated[float | None, typer.Option(
        "--zipf", parser=_number("--zipf", minimum=0, inclusive=True), metavar="EXPONENT",
        help="Zipf exponent of --split-models (default: the fleet's workload.zipf_exponent).")] = None,
    seed: Annotated[int, typer.Option("--seed", parser=_number("--seed", minimum=0, inclusive=True, integer=True),
                                      metavar="INT", help="Seed of every random draw.")] = 0,
    replan_interval: Annotated[float, typer.Option(
        "--replan-interval", parser=_number("--replan-interval", minimum=1, inclusive=True), metavar="SECONDS",
        help="Planner tick in simulated seconds (planners also run on the events they subscribe to).")] = 10.0,
    spot_start: Annotated[float, typer.Option(
        "--spot-start", parser=_number("--spot-start", minimum=0, inclusive=True), metavar="SECONDS",
        help="Replay the spot pools' availability traces from this time on their own clock (from the workload's "
             "start).")] = 0.0,
    no_spot: Annotated[bool, typer.Option("--no-spot", help="Keep every spot GPU up (no availability replay): "
                                                            "what the preemptions cost.")] = False,
    sweep: Annotated[str | None, typer.Option("--sweep", metavar="rate=START:STOP:STEP",
                                              help="Load sweep, e.g. rate=0.6:1.6:0.2.")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", parser=_number("--jobs", minimum=1, inclusive=True,
                                                                      integer=True), metavar="N",
                                             help="Worker processes (default: one per run, up to the CPUs).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report JSON instead of tables.")] = False,
) -> None:
    """Compare policies on FLEET under WORKLOAD in the simulator: SLO attainment, latency, goodput and cost."""
    from controller.outputs import check_output
    from controller.whatif.options import WhatIfConfig, check_paths, parse_policies, parse_sweep
    from controller.whatif.policies import policy_names
    from controller.whatif.report import build_report, comparison_table, sweep_table, write_json
    from controller.whatif.runner import default_processes, jobs_for, run_all

    config = WhatIfConfig(
        fleet=str(fleet), workload=workload, policies=parse_policies(policy, policy_names()), rate_scale=rate_scale,
        start_s=start, duration_s=duration, split_models=split_models, zipf_exponent=zipf, seed=seed,
        replan_interval_s=replan_interval, sweep=parse_sweep(sweep) if sweep else None, spot_start_s=spot_start,
        spot_replay=not no_spot,
    )
    check_paths(config)
    check_output("--report-json", report_json, suffix=".json", inputs=(fleet, workload))
    check_output("--plot", plot, suffix=".png", inputs=(fleet, workload))
    _check_inputs(config)
    todo = jobs_for(config)
    started = time.perf_counter()
    figures = run_all(config, todo, processes=jobs or default_processes(len(todo)),
                      console=None if json_out else err)
    runs: dict[float, dict[str, dict]] = {}
    for job in todo:
        runs.setdefault(job.point, {})[job.policy] = figures[job.index]
    sweep_meta = config.sweep.model_dump() if config.sweep else None
    report = build_report(config.model_dump(mode="json"), runs, sweep_meta, wall_s=time.perf_counter() - started)
    if report_json is not None:
        write_json(report, report_json)
    if plot is not None:
        from controller.whatif.plots import plot_comparison, plot_sweep

        (plot_sweep if config.sweep else plot_comparison)(report, plot)
    if json_out:
        print_json(report)
        return
    out.print(comparison_table(report))
    if config.sweep is not None:
        out.print(sweep_table(report))
    written = [str(p) for p in (report_json, plot) if p is not None]
    out.print(f"{len(todo)} simulation(s) in {report['wall_s']:.1f} s" + (f"; wrote {', '.join(written)}" if written
                                                                          else ""))


def _check_inputs(config: WhatIfConfig) -> None:
    """Load the fleet and the workload once in this process, so a bad file fails with one line before any run."""
    from controller.whatif.runner import spot_replay_of
    from controller.whatif.workload import prepare_workload
    from core.fleet import load_fleet

    fleet = load_fleet(config.fleet)
    table = prepare_workload(config, fleet)
    spot_replay_of(config, fleet, table.start_s)
