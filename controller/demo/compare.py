"""The closing comparison of `fleetwise demo`: the replayed slice simulated under the demo's policy and under the
`dedicated` baseline (static GPUs per model, FCFS — vLLM per model), on the same fleet and latency models, so the
live run's figures sit beside what each policy gives on exactly the same requests.

The baseline is configured the way `fleetwise whatif` configures it: told each model's mean rate over the slice
(`controller.whatif.policies.POLICIES`); the predictive policy plans from what it observes. All replan at the live
loop's cron period and on preemption notices, as the live controller did.
"""

from __future__ import annotations

from typing import Any

from controller.runtime import make_planner
from controller.whatif.policies import POLICIES, PolicyContext, PolicySetup
from core.fleet import FleetSpec
from core.requests import RequestTable
from core.state import EventKind
from simulator.availability import SpotReplay
from simulator.config import SimConfig
from simulator.fleet import FleetSimulation
from simulator.latency import build_latency_book

BASELINE = "dedicated"
SPOT_BASELINE = "spotserve"  # with a spot pool: fleetwise's planner with SpotServe's reactive spot controller


def simulate(fleet: FleetSpec, table: RequestTable, policy: str, *, replan_interval_s: float, seed: int,
             budget_s: float, spot: SpotReplay | None = None) -> dict[str, Any]:
    """The what-if figures (`SimResult.figures()`) of `policy` on `table`; `spot`: the spot pools' changes it
    replays (the predictive policies forecast the pools from their trace up to now, as in whatif)."""
    book = build_latency_book(fleet)
    spot = spot or SpotReplay([], {})
    if policy in POLICIES:
        setup = POLICIES[policy](PolicyContext(fleet, book, table, seed, availability=spot.on_clock))
    else:
        setup = PolicySetup(make_planner(policy, book))
    # The live loop replans on its cron and on preemption notices (the demo's spot wave posts them); so do the
    # simulations: other events wait for the next tick.
    config = SimConfig(replan_interval_s=replan_interval_s, replan_events=(EventKind.PREEMPTION_NOTICE.value,),
                       plan_budget_s=budget_s)
    sim = FleetSimulation(fleet, table, setup.planner, config=config, book=book, scenarios_fn=setup.scenarios_fn,
                          availability=spot.changes)
    return sim.run().figures()


def compare(fleet: FleetSpec, table: RequestTable, policy: str, *, replan_interval_s: float, seed: int,
            budget_s: float, spot: SpotReplay | None = None) -> dict[str, dict[str, Any]]:
    """policy → figures, for the demo's policy and the baseline, and with `spot` SpotServe's reactive controller
    on the spot pool too."""
    names = [policy] + [b for b in (BASELINE, *([SPOT_BASELINE] if spot else ())) if b != policy]
    return {name: simulate(fleet, table, name, replan_interval_s=replan_interval_s, seed=seed, budget_s=budget_s,
                           spot=spot) for name in names}
