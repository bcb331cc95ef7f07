"""The policies the what-if CLI can compare: a registry from name to factory (Vidur style), so adding a planner
is one line in `POLICIES`.

A factory receives a `PolicyContext` (the fleet, the latency models, the workload about to be replayed and the
seed) and returns a `PolicySetup`: the planner and, optionally, the scenarios it plans over. Baselines are told
what an operator would know before the run — each model's mean request rate and lengths over the workload
(`mean_rate_scenarios`): the static ones (dedicated, MuxServe) size their placement from it, as their papers do;
the reactive ones (QLM, Prism) use it only for the initial deployment and then react to what they observe.
A predictive planner brings its own `scenarios_fn` (forecasts), an oracle one that reads the true future. On a fleet
whose spot pools name availability traces, the predictive planners also forecast (oracle: read) the pools' GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.protocols import Planner
from core.requests import RequestTable
from core.state import FleetState
from optimizers.baselines import DedicatedPlanner, MuxServePlanner, PrismPlanner, QLMPlanner
from workloads.availability import AvailabilityTrace

ScenariosFn = Callable[[FleetState], ScenarioSet | None]


@dataclass(frozen=True)
class PolicyContext:
    """What a policy factory may use to build its planner."""

    fleet: FleetSpec
    latency: LatencyBook
    workload: RequestTable  # the requests that will be replayed (an oracle may read them; others must not)
    seed: int
    # Each spot pool's replayed availability trace on the simulation clock (an oracle may read it whole; a
    # forecasting planner sees it up to now).
    availability: Mapping[str, AvailabilityTrace] = field(default_factory=dict)
    planner_options: Mapping[str, object] = field(default_factory=dict)  # FleetwisePlanner fields (experiments)


@dataclass(frozen=True)
class PolicySetup:
    """A planner and the scenarios it is given at each replan (None: it plans from observations alone)."""

    planner: Planner
    scenarios_fn: ScenariosFn | None = None


PolicyFactory = Callable[[PolicyContext], PolicySetup]


def _baseline(cls: Callable[[LatencyBook], Planner]) -> PolicyFactory:
    def factory(ctx: PolicyContext) -> PolicySetup:
        expected = mean_rate_scenarios(ctx.workload, ctx.fleet)
        return PolicySetup(cls(ctx.latency), lambda _state: expected)

    return factory


POLICIES: dict[str, PolicyFactory] = {
    "dedicated": _baseline(DedicatedPlanner),
    "muxserve": _baseline(MuxServePlanner),
    "qlm": _baseline(QLMPlanner),
    "prism": _baseline(PrismPlanner),
    "fleetwise": lambda ctx: _predictive(ctx, oracle=False),
    "oracle": lambda ctx: _predictive(ctx, oracle=True),
    "spotserve": lambda ctx: _predictive(ctx, oracle=False, spot={"spot_policy": "reactive", "name": "spotserve"}),
}
# Policies that differ from `fleetwise` only on spot pools: SpotServe's reactive controller (REFERENCES.md: on each
# availability change, the configuration that meets the arrival rate at the lowest latency, else the highest
# throughput) in place of liveput, with the same forecasts and on-demand placement.
SPOT_ONLY = frozenset({"spotserve"})


def _predictive(ctx: PolicyContext, *, oracle: bool, spot: Mapping[str, object] | None = None) -> PolicySetup:
    """`fleetwise` over forecasts of what the run has seen, or (`oracle`) over the true future: the same
    optimizer either way (controller/whatif/predictive.py)."""
    from controller.whatif.predictive import fleetwise_setup

    return fleetwise_setup(ctx.fleet, ctx.latency, ctx.workload, mean_rate_scenarios(ctx.workload, ctx.fleet),
                           seed=ctx.seed, oracle=oracle, availability=ctx.availability or None,
                           planner_options={**ctx.planner_options, **(spot or {})} or None)


def policy_names() -> list[str]:
    return list(POLICIES)


def mean_rate_scenarios(table: RequestTable, fleet: FleetSpec) -> ScenarioSet:
    """One scenario, one interval spanning the workload: each fleet model's mean rate, lengths and class mix, and
    every pool at full size. What an operator configures a static deployment with."""
    models = tuple(fleet.model_names)
    classes = tuple(c.name for c in fleet.slo_classes)
    span_s = max(table.duration_s, 1.0)
    counts = np.zeros(len(models))
    prompt = np.zeros(len(models))
    output = np.zeros(len(models))
    share = np.zeros((len(models), len(classes)))
    share[:, 0] = 1.0  # a model without traffic: all in the first class
    for i, name in enumerate(models):
        if name not in table.model_names:
            continue
        rows = table.model_idx == table.model_names.index(name)
        n = int(np.count_nonzero(rows))
        if n == 0:
            continue
        counts[i] = n
        prompt[i] = float(table.prompt_tokens[rows].mean())
        output[i] = float(table.output_tokens[rows].mean())
        per_class = np.bincount(table.slo_idx[rows], minlength=len(table.slo_names))
        share[i] = [per_class[table.slo_names.index(c)] if c in table.slo_names else 0 for c in classes]
        share[i] = share[i] / share[i].sum() if share[i].sum() else share[i]
    return ScenarioSet(
        start_s=table.start_s, interval_s=span_s, models=models, pools=tuple(p.name for p in fleet.pools),
        slo_classes=classes, weights=np.ones(1), seeds=np.zeros(1, np.int64),
        demand_rps=(counts / span_s)[None, :, None], available_gpus=np.asarray(
            [[[p.count] for p in fleet.pools]], dtype=float),
        class_share=share, mean_prompt_tokens=prompt, mean_output_tokens=output,
    )
