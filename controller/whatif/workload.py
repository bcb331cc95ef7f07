"""The requests a what-if run replays: the workload source, then the CLI's slice, rate scale and model split.

Order (as `workloads.spec.build_workload`): source → time slice → rate scale → models → SLO classes. Without
`--split-models` the source is mapped onto the fleet by `workloads.spec.load_workload` (the fleet's popularity
mix); with it, traffic is split over the fleet's first N models by Zipf popularity and SLO classes are drawn
from the fleet's mix. Readers and transforms are the workloads package's; nothing is re-implemented here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.whatif.options import WhatIfConfig
from core.errors import InputError
from core.fleet import FleetSpec
from core.requests import RequestTable
from workloads.availability import is_availability_trace
from workloads.spec import NOT_THE_FLEETS, load_workload
from workloads.synth import assign_slo_classes, scale_rate, split_models, time_slice

# Independent seeds for the CLI's stages, derived from --seed (the source itself is loaded with --seed).
_RATE_STAGE, _SPLIT_STAGE, _SLO_STAGE = 11, 12, 13


def prepare_workload(config: WhatIfConfig, fleet: FleetSpec, *, rate_scale: float | None = None) -> RequestTable:
    """The table to replay for `config` (with `rate_scale` overriding the config's, for sweeps)."""
    split = config.split_models
    if split is not None and split > len(fleet.models):
        raise InputError("--split-models", split, f"at most the fleet's {len(fleet.models)} models")
    if config.zipf_exponent is not None and split is None:
        raise InputError("--zipf", config.zipf_exponent, "only together with --split-models N")
    if is_availability_trace(config.workload):
        raise InputError("--workload", config.workload, "a request trace or workload YAML (a spot pool of the fleet "
                         "replays an availability trace: its availability_trace)",
                         problem=f"{Path(config.workload).name} is a spot availability trace, not requests")
    try:
        table = load_workload(config.workload, fleet=None if split else fleet, seed=config.seed)
    except InputError as exc:
        if not exc.problem.endswith(NOT_THE_FLEETS) or split is not None:
            raise
        raise InputError(exc.where, exc.value, f"{exc.allowed}; or --split-models N, which spreads the workload "
                         "over the fleet's first N models and its SLO mix", problem=exc.problem) from None
    table = _slice(table, config)
    scale = config.rate_scale if rate_scale is None else rate_scale
    if scale != 1.0:
        table = scale_rate(table, scale, seed=_stage(config.seed, _RATE_STAGE))
    if split is not None:
        exponent = config.zipf_exponent if config.zipf_exponent is not None else fleet.spec.workload.zipf_exponent
        table = split_models(table, fleet.model_names[:split], zipf_exponent=exponent,
                             seed=_stage(config.seed, _SPLIT_STAGE))
        table = assign_slo_classes(table, fleet, seed=_stage(config.seed, _SLO_STAGE))
    if not len(table):
        raise InputError("--workload", config.workload, "a workload with at least one request after slicing")
    return table


def _slice(table: RequestTable, config: WhatIfConfig) -> RequestTable:
    """`[start, start + duration)` on the workload's own clock (a trace with absolute times keeps them)."""
    if config.start_s == 0 and config.duration_s is None:
        return table
    if len(table) and config.start_s >= table.arrival_s[-1]:
        raise InputError("--start", config.start_s, f"a start before the workload ends ({table.arrival_s[-1]:.0f} s)")
    end = config.start_s + config.duration_s if config.duration_s is not None else np.inf
    part = time_slice(table, config.start_s, end)
    if len(table) and not len(part):
        raise InputError("--start", config.start_s,
                         f"a slice that holds requests: they arrive from {table.arrival_s[0]:.0f} to "
                         f"{table.arrival_s[-1]:.0f} s on the workload's clock",
                         problem=f"[{config.start_s:g}, {end:g}) s holds no request")
    return part


def _stage(seed: int, stage: int) -> int:
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])
