"""The resolved configuration of one what-if run, checked at the edge: every bad option is an `InputError` naming
the option, its value and what is allowed (the CLI prints one line and exits 2).

`WhatIfConfig` is what the report JSON stores under `config`, so a run can be repeated from its report.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from core.errors import InputError

SWEEP_PARAMETERS = ("rate",)  # what `--sweep` may vary
MAX_SWEEP_POINTS = 50


class Sweep(BaseModel):
    """A load sweep: the run is repeated at each rate scale in `values` (`--sweep rate=0.6:1.6:0.2`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    parameter: str = Field(description="What varies: 'rate' (a multiplier on --rate-scale).")
    values: tuple[float, ...] = Field(description="The points, inclusive of both ends.")


class WhatIfConfig(BaseModel):
    """Everything a what-if run depends on (paths as given, resolved relative to the working directory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    fleet: str = Field(description="Fleet YAML.")
    workload: str = Field(description="Trace file, ServeGen folder or workload YAML.")
    policies: tuple[str, ...] = Field(description="Planners to compare, in report order.")
    rate_scale: Annotated[float, Field(gt=0)] = 1.0
    start_s: Annotated[float, Field(ge=0)] = 0.0
    duration_s: Annotated[float, Field(gt=0)] | None = None
    split_models: Annotated[int, Field(ge=1)] | None = None
    zipf_exponent: Annotated[float, Field(ge=0)] | None = None
    seed: int = 0
    # At least a second of simulated time: a planner solves in tenths of a second or more, and a tick of 1e-9 s
    # never lets the simulation advance.
    replan_interval_s: Annotated[float, Field(ge=1.0)] = 10.0
    sweep: Sweep | None = None
    # Spot pools replay their availability_trace from this trace time, starting with the workload.
    spot_start_s: Annotated[float, Field(ge=0)] = 0.0
    spot_replay: bool = True


def parse_policies(text: str, known: list[str]) -> tuple[str, ...]:
    """'a,b,c' → ('a', 'b', 'c'), each a registered policy, no repeats."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise InputError("--policy", text, f"a comma-separated list of policies: {', '.join(known)}")
    for name in names:
        if name not in known:
            raise InputError("--policy", name, f"one of {', '.join(known)}")
    if len(set(names)) != len(names):
        raise InputError("--policy", text, "each policy once")
    return names


_SWEEP = re.compile(r"^\s*(?P<param>[a-z_]+)\s*=\s*(?P<lo>[0-9.eE+-]+):(?P<hi>[0-9.eE+-]+):(?P<step>[0-9.eE+-]+)\s*$")


def parse_sweep(text: str) -> Sweep:
    """'rate=0.6:1.6:0.2' → Sweep('rate', (0.6, 0.8, …, 1.6)); both ends included."""
    allowed = "PARAM=START:STOP:STEP with PARAM one of " + ", ".join(SWEEP_PARAMETERS) + " (e.g. rate=0.6:1.6:0.2)"
    m = _SWEEP.match(text)
    if m is None:
        raise InputError("--sweep", text, allowed)
    if m["param"] not in SWEEP_PARAMETERS:
        raise InputError("--sweep", m["param"], f"a sweep parameter: {', '.join(SWEEP_PARAMETERS)}")
    try:
        lo, hi, step = float(m["lo"]), float(m["hi"]), float(m["step"])
    except ValueError:
        raise InputError("--sweep", text, allowed) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo > 0 and hi >= lo and step > 0):
        raise InputError("--sweep", text, "0 < START ≤ STOP and STEP > 0, e.g. rate=0.6:1.6:0.2")
    count = math.floor((hi - lo) / step + 1e-9) + 1
    if count > MAX_SWEEP_POINTS:
        raise InputError("--sweep", text, f"at most {MAX_SWEEP_POINTS} points (this has {count})")
    return Sweep(parameter=m["param"], values=tuple(round(lo + i * step, 10) for i in range(count)))


def check_paths(config: WhatIfConfig) -> None:
    """The fleet and workload must exist before any process starts."""
    if not Path(config.fleet).is_file():
        raise InputError("--fleet", config.fleet, "an existing fleet YAML file")
    if not Path(config.workload).exists():
        raise InputError("--workload", config.workload, "an existing trace file, ServeGen folder or workload YAML")
