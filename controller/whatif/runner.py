"""Running what-if jobs: one simulation per (policy, sweep point), in parallel processes, with a progress bar.

A `Job` is picklable and self-contained: the worker process loads the fleet, prepares the workload, builds the
latency book, the spot pools' availability replay and the policy's planner, runs `simulator.fleet.FleetSimulation`
and returns the policy's figures (`SimResult.figures()`). Runs use `concurrent.futures.ProcessPoolExecutor`;
progress (simulated time over the workload's span) flows back through a manager queue and drives one Rich progress
bar per job.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from controller.whatif.options import WhatIfConfig
from controller.whatif.policies import POLICIES, PolicyContext
from controller.whatif.workload import prepare_workload
from core.errors import InputError
from core.fleet import FleetSpec, load_fleet
from simulator.availability import SpotReplay, spot_replay
from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from simulator.kernel import Priority
from simulator.latency import build_latency_book

Figures = dict[str, Any]
PROGRESS_STEPS = 100  # progress messages per job over the workload's span


@dataclass(frozen=True)
class Job:
    """One simulation: a policy at one sweep point (`point` = 1.0 without a sweep)."""

    index: int
    policy: str
    point: float

    def label(self, sweep: bool) -> str:
        return f"{self.policy} @ {self.point:g}×" if sweep else self.policy


def jobs_for(config: WhatIfConfig) -> list[Job]:
    points = config.sweep.values if config.sweep is not None else (1.0,)
    return [Job(i, p, v) for i, (v, p) in enumerate((v, p) for v in points for p in config.policies)]


def sim_config(config: WhatIfConfig) -> SimConfig:
    return SimConfig(replan_interval_s=config.replan_interval_s)


def spot_replay_of(config: WhatIfConfig, fleet: FleetSpec, start_s: float) -> SpotReplay:
    """The fleet's spot traces from `config.spot_start_s` on, at simulation time `start_s` (the workload's start);
    none with --no-spot. A start the traces cannot give is an error naming --spot-start."""
    if config.spot_start_s and (not config.spot_replay or not any(p.availability_trace for p in fleet.pools)):
        raise InputError("--spot-start", config.spot_start_s, "only with a fleet whose spot pools name an "
                         "availability_trace, and without --no-spot")
    if not config.spot_replay:
        return SpotReplay([], {})
    try:
        return spot_replay(fleet, Path(config.fleet).parent, offset_s=config.spot_start_s, start_s=start_s)
    except InputError as exc:
        if exc.where != "offset_s":
            raise
        raise InputError("--spot-start", config.spot_start_s, exc.allowed) from None


def run_job(config: WhatIfConfig, job: Job, progress: Any = None) -> tuple[int, Figures]:
    """Simulate one job; `progress` (a queue, or a callable) receives (job index, fraction of the span)."""
    started = time.perf_counter()
    fleet = load_fleet(config.fleet)
    table = prepare_workload(config, fleet, rate_scale=config.rate_scale * job.point)
    book = build_latency_book(fleet)
    spot = spot_replay_of(config, fleet, table.start_s)
    setup = POLICIES[job.policy](PolicyContext(fleet, book, table, config.seed, availability=spot.on_clock))
    sim = FleetSimulation(fleet, table, setup.planner, config=sim_config(config), book=book,
                          scenarios_fn=setup.scenarios_fn, availability=spot.changes)
    if progress is not None:
        report = progress if callable(progress) else progress.put
        sim.kernel.schedule(_ProgressTick.first(table.start_s, table.start_s + table.duration_s, job.index, report))
    result = sim.run()
    figures = result.figures()
    figures["job_wall_s"] = time.perf_counter() - started
    if progress is not None:
        (progress if callable(progress) else progress.put)((job.index, 1.0))
    return job.index, figures


@dataclass(slots=True)
class _ProgressTick:
    """A kernel event that reports how far simulated time has come; it changes nothing in the simulation."""

    time_s: float
    start_s: float
    end_s: float
    job: int
    report: Callable[[tuple[int, float]], None]
    priority: int = Priority.MONITOR

    @classmethod
    def first(cls, start_s: float, end_s: float, job: int, report: Callable[[tuple[int, float]], None]) -> _ProgressTick:
        return cls(start_s, start_s, end_s, job, report)

    def handle(self) -> _ProgressTick | None:
        span = max(self.end_s - self.start_s, 1e-9)
        self.report((self.job, min((self.time_s - self.start_s) / span, 0.999)))
        nxt = self.time_s + span / PROGRESS_STEPS
        return None if nxt > self.end_s else _ProgressTick(nxt, self.start_s, self.end_s, self.job, self.report)


def run_all(config: WhatIfConfig, jobs: list[Job], *, processes: int, console: Console | None) -> dict[int, Figures]:
    """Run every job (in `processes` worker processes when > 1) showing progress on `console` (None: quiet)."""
    with _progress(console) as bars:
        tasks = {j.index: bars.add_task(j.label(config.sweep is not None), total=1.0) for j in jobs}
        update = lambda msg: bars.update(tasks[msg[0]], completed=msg[1])
        if processes <= 1 or len(jobs) == 1:
            return dict(run_job(config, job, update) for job in jobs)
        return _run_parallel(config, jobs, processes, update)


def _run_parallel(config: WhatIfConfig, jobs: list[Job], processes: int,
                  update: Callable[[tuple[int, float]], None]) -> dict[int, Figures]:
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Manager() as manager, ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        messages = manager.Queue()
        pending: set[Future[tuple[int, Figures]]] = {pool.submit(run_job, config, job, messages) for job in jobs}
        out: dict[int, Figures] = {}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(messages, update)
            for future in done:
                index, figures = future.result()
                out[index] = figures
        _drain(messages, update)
        return out


def _drain(messages: Any, update: Callable[[tuple[int, float]], None]) -> None:
    while True:
        try:
            update(messages.get_nowait())
        except queue.Empty:
            return


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), console=console, disable=console is None, transient=False)


def default_processes(num_jobs: int) -> int:
    return max(1, min(num_jobs, os.cpu_count() or 1))
