"""`FleetwisePlanner`: the `fleetwise` policy — liveput for spot pools, placement, queues and offline work, in one plan.

Each call: (1) liveput plans every spot pool over the scenario horizon and the plan takes its first step (receding
horizon: every call re-solves from what runs; `optimizers.spot`); (2) re-place the on-demand pools when the placement
is older than `placement_interval_s`, an event invalidates it (GPUs added or removed, a preemption notice, a failed
action) or a model's observed rate outgrows its placed capacity — the program covers, per scenario, what the spot tier
is not expected to serve; such a surge between placements only adds the replicas the program asks for (`grow_only`)
next to what runs, which keeps its GPUs and the KV it uses (`surge_add_only`; on fleets with spot pools a surge
re-places by default) — else keep the current plan's on-demand replicas and give a replica to each model whose
requests wait with none (`optimizers.on_demand`); (3) pack both onto GPUs and fill the memory left into KV shares; (4)
order the waiting request groups on the serving replicas (queue planner) with the time left; (5) pause and resume
offline work (`optimizers.offline`); (6) assemble the plan: actions make-before-break with reasons, expected outcome
per scenario, solver statistics. Between calls the planner keeps the time of its last placement and that placement's
replicas before the KV fill (what on-demand activations pack around)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.plan import Plan, SolverStats, digest
from core.state import EventKind, FleetState
from optimizers.offline import OfflineSettings, leaving_gpus, plan_offline
from optimizers.on_demand import activate_on_demand, add_replicas
from optimizers.outcome import expected_outcome, scenarios_from_load
from optimizers.placement.packing import PlacedReplica, fill_kv, pack, packing_shortfall_gib, replica_items
from optimizers.placement.problem import (
    PlacementProblem,
    PlacementSettings,
    available_by_interval,
    build_problem,
    demand_by_interval,
    with_packing_reserve,
)
from optimizers.placement.solve import PlacementResult, packed_objective, solve_placement
from optimizers.plan import (
    RunningReplica,
    diff_actions,
    make_plan,
    planned_replicas,
    routing_weights,
    running_replicas,
    to_core_replicas,
)
from optimizers.queue_actions import plan_queues
from optimizers.queues import LengthModel, QueueSettings
from optimizers.spot import (
    SOURCES,
    SpotStep,
    on_demand_base,
    plan_spot_pools,
    residual_problem,
    spot_alternatives,
    tier_usd,
)

REPLACE_ON = frozenset({EventKind.GPU_ADDED, EventKind.GPU_REMOVED, EventKind.PREEMPTION_NOTICE,
                        EventKind.ACTION_FAILED})


@dataclass
class FleetwisePlanner:
    """Implements `core.protocols.Planner` (name `fleetwise`)."""

    book: LatencyBook = field(default_factory=LatencyBook)
    settings: PlacementSettings = field(default_factory=PlacementSettings)
    queue_settings: QueueSettings = field(default_factory=QueueSettings)
    offline_settings: OfflineSettings = field(default_factory=OfflineSettings)
    placement_interval_s: float = 300.0
    horizon_intervals: int = 1
    placement_share: float = 0.6  # of the budget; packing may take `packing_share` (CP-SAT only to repair)
    packing_share: float = 0.2
    lengths: LengthModel | None = None  # group output lengths for the queue planner (default: scenario means)
    spot_policy: str = "liveput"  # or "reactive": SpotServe's controller on spot pools (optimizers.spot)
    notice_expiry_s: float = 300.0  # a GPU still up this long after its preemption notice was not reclaimed after all
    surge_factor: float = 1.1  # observed rate over placed SLO capacity that re-places before the interval ends ...
    min_surge_gap_s: float = 30.0
    # ... and by this many req/s: a bursty tail model a few requests over its capacity is the queues' business (on
    # the long tail, re-placing for such bursts reshuffled the tail every 30 s)
    surge_min_rps: float = 1.0
    # Surges between full placements only add replicas next to what runs (`_add_for_surge`) instead of re-placing
    # the fleet: True, False, or None — add unless the fleet has a spot pool. Measured (docs/optimizers.md,
    # "Surges"): 99.9 % instead of 94.5 % at 1.5-1.6x saturation at the same cost, the long tail 99.9 % on fewer
    # GPUs; on spot fleets attainment rose too (g4dn 92.9 -> 98.6 %), but on Parcae p3 SLO goodput per GPU-hour
    # fell 10 %, and against the reactive controller (which adds too) liveput's margin fell to 1.03-1.05x.
    surge_add_only: bool | None = None
    # A surge addition may take the KV fill of running replicas, rather than buy GPUs for memory that sits idle,
    # down to this multiple of the KV they use now and of what their part of the observed rate needs (never below
    # their placement's share: `_held_kv`).
    surge_kv_headroom: float = 2.0
    # Re-solves of the placement when packing cannot deliver the memory it counted on in a pool (`_place`), and the
    # shortfall (GiB over all pools) below which a packing is taken as it is.
    repack_rounds: int = 2
    min_shortfall_gib: float = 0.5
    # Plans that depend only on their inputs (simulations, benchmarks): solvers stop on work limits, every stage
    # runs whatever the clock says (`PlacementSettings.deterministic`, `QueueSettings.deterministic`). Live
    # planning keeps wall-clock budgets; with them a busy machine gets different plans.
    deterministic: bool = False
    work_budget_s: float = 2.0  # the budget a deterministic planner sizes its work limits by, whatever it is given
    name: str = "fleetwise"
    subscriptions: frozenset[EventKind] = REPLACE_ON | {EventKind.SLO_VIOLATION_PREDICTED, EventKind.QUEUE_BUILDUP,
                                                       EventKind.REQUEST_FOR_INACTIVE_MODEL}
    _last_placement_s: float | None = field(default=None, repr=False)  # full or surge
    _last_full_placement_s: float | None = field(default=None, repr=False)
    _placed: dict[str, PlacedReplica] = field(default_factory=dict, repr=False)  # last placement, before the KV fill
    # GPU → when its preemption notice came, until the GPU leaves (or comes back); a notice is an event of one
    # plan's state only, and a replan inside the grace period must not place anything on the GPU either.
    _notices: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.deterministic:
            self.settings = replace(self.settings, deterministic=True)
            self.queue_settings = replace(self.queue_settings, deterministic=True)

    def _leaving(self, state: FleetState) -> frozenset[str]:
        """GPUs with a preemption notice, in this plan's events or an earlier one's, that have not left (`_notices`)."""
        for e in state.events:
            if e.worker_id and e.kind == EventKind.PREEMPTION_NOTICE:
                self._notices[e.worker_id] = e.time_s
            elif e.worker_id and e.kind in (EventKind.GPU_REMOVED, EventKind.GPU_ADDED):
                self._notices.pop(e.worker_id, None)
        self._notices = {g: t for g, t in self._notices.items() if state.time_s - t < self.notice_expiry_s}
        return frozenset(self._notices)

    def _left_s(self, budget_s: float, start: float) -> float:
        """What is left of a plan's budget (all of it when deterministic: stages stop on work, not time)."""
        return budget_s if self.deterministic else budget_s - (time.perf_counter() - start)

    def plan(self, fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None, budget_s: float) -> Plan:
        """A plan within about `budget_s` seconds; never raises for infeasible demand (see Planner)."""
        start = time.perf_counter()
        if self.deterministic:
            budget_s = self.work_budget_s
        reasons: list[str] = []
        if scenarios is None:
            scenarios = scenarios_from_load(fleet, state)
            reasons.append("no forecast given: scenarios at 0.7×, 1× and 1.4× the observed rates")
        healthy = _plannable_gpus(fleet, state, self._leaving(state))
        weights = {m.name: m.weight_gib for m in fleet.models}
        running = running_replicas(state, weights)
        planned = planned_replicas(state, weights) if state.current_plan is not None else running
        build = lambda floor, held=None: build_problem(
            fleet, scenarios, book=self.book, healthy=healthy, horizon_intervals=self.horizon_intervals,
            current=[(r.model, r.pool, r.tp, (r.kv_share_gib if held is None else held.get(r.replica_id,
                     r.kv_share_gib)) * (1 if r.tp == 1 else 0)) for r in running],
            host_models=_host_models(state), settings=self.settings, waiting_rps=_waiting_rps(state, running) | floor)
        problem = build({})
        full = self._must_place(state)
        surge = self._outgrown(problem, state, planned)
        add_only = self._adds_on_surge(problem) and bool(surge) and not full
        held = self._held_kv(problem, state, running) if add_only else None
        if surge:  # what is arriving now outweighs the forecast: every scenario carries at least the observed rate
            problem = replace(build(surge, held), grow_only=add_only)
            reasons.append(("added capacity early" if add_only else "re-placed early")
                           + ": observed rate above placed SLO capacity for "
                           + ", ".join(f"{m} ({r:.2f} req/s)" for m, r in sorted(surge.items())))
        spot_args = (problem, demand_by_interval(fleet, scenarios), available_by_interval(problem.pools, scenarios),
                     scenarios.interval_s, _running_counts(running))
        base = on_demand_base(problem, planned or running)
        replace_all = full or (surge and not add_only)
        if self.spot_policy == "liveput" and any(p.spot for p in problem.pools):
            # the program chooses (`_place`; between placements `_keep_or_move` weighs liveput's step against what runs)
            tiers = spot_alternatives(*spot_args, base=base,
                                      sources=SOURCES if replace_all else ("liveput", "current"))
        else:
            tiers = [plan_spot_pools(*spot_args, self.spot_policy, base=base)]
        spot = tiers[0] if replace_all else self._keep_or_move(problem, tiers, planned or running, reasons)
        stages = {"liveput": time.perf_counter() - start} if spot else {}
        placement = None
        if replace_all:
            placement, spot, (targets, dropped, packer) = self._place(problem, tiers, running, planned or running,
                                                                      fleet, healthy, budget_s, reasons)
            stages["placement"] = time.perf_counter() - start - sum(stages.values())
            self._last_placement_s = self._last_full_placement_s = state.time_s
            self._placed = {t.replica_id: t for t in targets}
        elif add_only:
            reasons += [s.reason for s in spot]
            placement, (targets, dropped, packer) = self._add_for_surge(problem, spot, running, planned or running,
                                                                        fleet, healthy, budget_s, held or {})
            stages["placement"] = time.perf_counter() - start - sum(stages.values())
            self._last_placement_s = state.time_s
        else:
            reasons += [s.reason for s in spot]
            targets, dropped, packer = _targets(problem, None, spot, running, planned or running, fleet, healthy,
                                                max(0.0, self.packing_share * budget_s))
        if placement is None:
            targets, dropped, packer = self._on_demand(problem, state, running, targets, dropped, packer, fleet,
                                                       healthy, budget_s, reasons)
        targets = fill_kv(problem, targets)
        stages["packing"] = time.perf_counter() - start - sum(stages.values())
        reasons += dropped
        rate_of = {t.replica_id: problem.configs[t.config_index].online.rate_at(t.kv_share_gib) for t in targets}
        queue = plan_queues(state, fleet, targets, rate_of, scenarios, self.book, self.queue_settings,
                            budget_s=max(0.02, self._left_s(budget_s, start)), lengths=self.lengths)
        stages["queues"] = time.perf_counter() - start - sum(stages.values())
        routing = routing_weights(targets, rate_of)
        offline = plan_offline(state, fleet, running, targets, _expected_load(problem, targets, routing), rate_of,
                               self.offline_settings)
        parts = _Parts(problem, placement, spot, targets, running, rate_of, routing, packer)
        return self._assemble(fleet, state, scenarios, parts, queue, offline, reasons, stages, start)

    def _place(self, problem: PlacementProblem, tiers: list[list[SpotStep]], running: list[RunningReplica],
               planned: list[RunningReplica], fleet: FleetSpec, healthy: set[str] | None, budget_s: float,
               reasons: list[str]
               ) -> tuple[PlacementResult, list[SpotStep], tuple[list[PlacedReplica], list[str], str]]:
        """Choose the spot tier, solve the program for what it leaves and pack that onto GPUs.

        With several spot tiers to choose from (`spot.spot_alternatives`), each is solved and packed
        (`_solve_and_pack`), and the one whose total is lowest is kept: the program's expected cost of what its
        packing delivers, plus the spot GPUs and the migrations to them. Packing is part of the price: a tier whose
        program looks cheap in aggregate memory but does not pack loses what the packing cannot hold."""
        share = budget_s / len(tiers)
        done = [self._solve_and_pack(problem, tier, running, planned, fleet, healthy, share) for tier in tiers]
        totals = [cost + tier_usd(tier, problem.horizon_s) for tier, (_, _, cost, _) in zip(tiers, done)]
        pick = int(np.argmin(totals))
        placement, packed, _, notes = done[pick]
        reasons += [s.reason for s in tiers[pick]]
        if len(tiers) > 1:
            reasons.append("spot tier chosen with the on-demand placement: " + "; ".join(
                f"{'+'.join(sorted({s.source for s in tier}))} {total:.2f} USD" + (" (kept)" if i == pick else "")
                for i, (tier, total) in enumerate(zip(tiers, totals)))
                + " (expected cost of the packed placement + spot GPUs + migrations over the horizon)")
        reasons += notes
        return placement, tiers[pick], packed

    def _solve_and_pack(self, problem: PlacementProblem, spot: list[SpotStep], running: list[RunningReplica],
                        planned: list[RunningReplica], fleet: FleetSpec, healthy: set[str] | None, budget_s: float
                        ) -> tuple[PlacementResult, tuple[list[PlacedReplica], list[str], str], float, list[str]]:
        """The program for what `spot` leaves, packed onto GPUs: (placement, packing, the program's expected cost of
        the packing, notes for the plan's reasons). The program counts a pool's memory in aggregate; where packing
        falls short of it (a KV share cut, a replica dropped: SLO capacity the program counted on), re-solve with
        that shortfall reserved in the pool (`with_packing_reserve`), at most `repack_rounds` times while the
        placement and packing budget lasts. Of the packings, the one the program itself prices lowest wins
        (`packed_objective`: its expected cost with KV at what packing delivered) — the reserve may free memory on
        the wrong GPU, so a re-solve is not better by construction."""
        started = time.perf_counter()
        original = program = residual_problem(problem, spot)
        priced = replace(original, grow_only=False)  # packings are priced as plans, whatever bounds found them
        pack_s = max(0.0, self.packing_share * budget_s)
        rounds, notes = [], []
        for round_ in range(1 + self.repack_rounds):
            spent = 0.0 if self.deterministic else time.perf_counter() - started
            if round_ and spent >= (self.placement_share + self.packing_share) * budget_s:
                break
            placement = solve_placement(program, time_limit_s=max(0.2, self.placement_share * budget_s - spent))
            packed = _targets(problem, placement, spot, running, planned, fleet, healthy, pack_s)
            d = placement.decision
            short = packing_shortfall_gib(program, d.replicas, d.kv_gib, packed[0])
            rounds.append((placement, packed))
            if short.sum() < self.min_shortfall_gib:
                break
            program = with_packing_reserve(program, short, d.gpus_used(program))
            notes.append("re-placed: packing fell short of the placement by " + ", ".join(
                f"{s:.1f} GiB on {pool.name}" for pool, s in zip(program.pools, short) if s > 1e-6)
                + " (fragmentation: reserved in the program)")
        if len(rounds) == 1:
            return rounds[0][0], rounds[0][1], rounds[0][0].objective_usd, notes
        costs = [packed_objective(priced, *_packed_decision(priced, packed[0])) for _, packed in rounds]
        best = int(np.argmin(costs))
        notes.append(f"kept the packing of solve {best + 1} of {len(rounds)}: expected cost "
                     + " / ".join(f"{c:.2f}" for c in costs) + " USD with KV as packed")
        return rounds[best][0], rounds[best][1], costs[best], notes

    def _keep_or_move(self, problem: PlacementProblem, tiers: list[list[SpotStep]], planned: list[RunningReplica],
                      reasons: list[str]) -> list[SpotStep]:
        """Between full placements the on-demand tier stays as placed, and the spot tier moves to liveput's step
        only if the program, with the on-demand replicas fixed as they are, prices the move below keeping what runs
        (`packed_objective` of each tier's residual, plus its spot GPUs and migrations). Liveput alone values a spot
        replica by the requests it serves, so it would trade one that covers what the on-demand tier was sized to
        leave for one whose model the on-demand tier already serves."""
        liveput = tiers[0]
        current = next((t for t in tiers if all(s.source == "current" for s in t)), None)
        if current is None or all((a.counts == b.counts).all() for a, b in zip(liveput, current)):
            return liveput
        kept = _kept(problem, planned, {p.name for p in problem.pools if p.spot})
        costs = []
        for tier in (current, liveput):
            priced = replace(residual_problem(problem, tier), grow_only=False)
            costs.append(packed_objective(priced, *_packed_decision(priced, kept)) + tier_usd(tier, problem.horizon_s))
        move = costs[1] < costs[0]
        if not np.isfinite(costs).any():
            reasons.append("spot tier kept: the program found no solution with the on-demand tier as placed "
                           "(the next full placement re-decides both)")
        else:
            reasons.append(f"spot tier {'moves to liveput' if move else 'kept'}: with the on-demand tier as placed, "
                           f"liveput's step {costs[1]:.2f} USD, what runs {costs[0]:.2f} USD")
        return liveput if move else current

    def _add_for_surge(self, problem: PlacementProblem, spot: list[SpotStep], running: list[RunningReplica],
                       planned: list[RunningReplica], fleet: FleetSpec, healthy: set[str] | None, budget_s: float,
                       held: dict[str, float]) -> tuple[PlacementResult, tuple[list[PlacedReplica], list[str], str]]:
        """A surge between full placements: the program (`grow_only`: taking capacity from what runs is priced out)
        says which replicas to add; what runs keeps its GPUs and the KV it holds (`held`, `_held_kv`), and the
        additions are packed into the room left (`on_demand.add_replicas`)."""
        pack_s = max(0.0, self.packing_share * budget_s)
        kept, dropped, packer = _targets(problem, None, spot, running, planned, fleet, healthy, pack_s)
        placement = solve_placement(residual_problem(problem, spot),
                                    time_limit_s=max(0.2, self.placement_share * budget_s))
        d = placement.decision
        have = np.bincount([r.config_index for r in kept], minlength=len(problem.configs))
        # the program's replicas at its shares, beyond those of each config that run: the additions
        extra = np.maximum(d.replicas - have, 0)
        new = []
        for item in replica_items(problem, d.replicas, d.kv_gib, d.capacity_rps, {}):
            if extra[item.config.index] > 0:
                extra[item.config.index] -= 1
                new.append(item)
        if not new:
            return placement, (kept, dropped, packer)
        gpu_ids = {p.name: [g for g in p.gpu_ids() if healthy is None or g in healthy] for p in fleet.pools}
        added, packed = add_replicas(problem, kept, self._placed, new, gpu_ids, pack_s, keep_gib=held)
        self._placed.update({r.replica_id: r for r in packed.replicas if r.replica_id not in self._placed})
        return placement, (added, dropped + [f"not placed: {x}" for x in packed.dropped], packed.packer)

    def _adds_on_surge(self, problem: PlacementProblem) -> bool:
        """Whether a surge between placements only adds (`surge_add_only`; None: unless a pool is spot)."""
        if self.surge_add_only is not None:
            return self.surge_add_only
        return not any(p.spot for p in problem.pools)

    def _held_kv(self, problem: PlacementProblem, state: FleetState, running: list[RunningReplica]
                 ) -> dict[str, float]:
        """replica → the KV share a surge leaves it: what it holds now, less the part of the KV fill it does not
        need — never below the share the last placement gave it, `surge_kv_headroom` × the KV in use, or the share
        `surge_kv_headroom` × its part of its model's observed rate (split by SLO capacity) needs. A surge
        finds replicas busy: taking memory they use, or will under the observed load, preempts them. A replica with
        no report of the KV in use keeps all it holds. (Keeping all for a replica with a request waiting, too, kept
        a 56 GiB fill of which 0.6 GiB was in use, and the addition bought two A100s instead.)"""
        cap = {r.replica_id: rate for r in running if (rate := _slo_capacity(problem, r)) is not None}
        by_model: dict[str, float] = {}
        for r in running:
            by_model[r.model] = by_model.get(r.model, 0.0) + cap.get(r.replica_id, 0.0)
        out = {}
        for r in running:
            placed = self._placed.get(r.replica_id)
            out[r.replica_id] = r.kv_share_gib
            if r.kv_used_gib is None or placed is None or r.replica_id not in cap:
                continue
            load = state.load.get(r.model)
            rate = (load.request_rate_per_s if load else 0.0) * cap[r.replica_id] / max(by_model[r.model], 1e-9)
            needed = problem.config_for(r.model, r.pool, r.tp).online.kv_needed_gib(self.surge_kv_headroom * rate)
            out[r.replica_id] = min(r.kv_share_gib, max(placed.kv_share_gib, needed,
                                                        self.surge_kv_headroom * r.kv_used_gib))
        return out

    def _on_demand(self, problem, state, running, targets, dropped, packer, fleet, healthy, budget_s, reasons):
        """Between placements: a replica for each model whose requests wait with none (`optimizers.on_demand`)."""
        waiting = _waiting_rps(state, running)
        if not waiting:
            return targets, dropped, packer
        gpu_ids = {p.name: [g for g in p.gpu_ids() if healthy is None or g in healthy] for p in fleet.pools}
        added, packed = activate_on_demand(problem, targets, self._placed, waiting, gpu_ids,
                                           max(0.0, self.packing_share * budget_s))
        if packed is None:
            return targets, dropped, packer
        reasons.append(f"activation on demand for {', '.join(sorted(waiting))}: requests wait with no replica")
        # Its packing (before the KV fill) is what the next activation packs around: without it, the new replicas'
        # filled shares left no room, and every later activation opened a GPU of its own.
        self._placed |= {r.replica_id: r for r in packed.replicas}
        return added, dropped + [f"not placed: {x}" for x in packed.dropped], packed.packer

    def _outgrown(self, problem: PlacementProblem, state: FleetState, planned: list[RunningReplica]
                  ) -> dict[str, float]:
        """Models whose observed rate exceeds their placed SLO capacity by `surge_factor` (a surge the forecast
        missed), with that rate: they re-place early, at most once per `min_surge_gap_s`. The rate counts offline
        arrivals too: they run in the same batches as online ones and slow them (docs/optimizers.md, "Surges")."""
        if self._last_placement_s is None or state.time_s - self._last_placement_s < self.min_surge_gap_s:
            return {}
        capacity: dict[str, float] = {}
        for r in planned:
            if (rate := _slo_capacity(problem, r)) is not None:
                capacity[r.model] = capacity.get(r.model, 0.0) + rate
        return {model: load.request_rate_per_s for model, load in state.load.items()
                if load.request_rate_per_s > self.surge_factor * capacity.get(model, 0.0) > 0
                and load.request_rate_per_s - capacity[model] >= self.surge_min_rps}

    def _must_place(self, state: FleetState) -> bool:
        """A full placement: the first, after an event that invalidates the current one, or `placement_interval_s`
        after the last full one (surge additions in between do not postpone it)."""
        if self._last_full_placement_s is None or state.current_plan is None:
            return True
        if any(e.kind in REPLACE_ON for e in state.events):
            return True
        return state.time_s - self._last_full_placement_s >= self.placement_interval_s

    def _assemble(self, fleet, state, scenarios, parts: _Parts, queue, offline, reasons, stages, start) -> Plan:
        problem, placement, targets = parts.problem, parts.placement, parts.targets
        host = placement.decision.host_models if placement else frozenset()
        why = _why(problem, placement) | _why_spot(problem, parts.spot)
        activate = {c.model: c.activate_host_s for c in problem.configs}
        usable = {g: problem.pools[i].usable_gib for i, p in enumerate(fleet.pools) for g in p.gpu_ids()}
        used = np.array([len({g for t in targets if t.pool == p.name for g in t.gpu_ids}) for p in problem.pools])
        expected = expected_outcome(problem, placement.decision, placement.unmet_rps, used) if placement else None
        reasons = reasons + _plan_reasons(problem, placement, expected, len(targets), len(parts.running)) \
            + queue.reasons

        def build(b) -> None:
            first = offline.emit_first(b)
            route = diff_actions(b, targets, parts.running, usable_gib=usable, routing=parts.routing,
                                 host_models=host, why=why, activate_s=activate)
            queue.emit(b, route)
            offline.emit_after(b, route, first)

        pools = {c.model: (problem.pools[c.pool_index].name, problem.pools[c.pool_index].gpu_type)
                 for c in problem.configs}
        solver = _solver_stats(placement, parts, queue.name, stages, time.perf_counter() - start)
        key = digest(fleet.name, state.time_s, scenarios.demand_rps, scenarios.available_gpus,
                     tuple(sorted(r.replica_id for r in parts.running)), tuple(g.group_id for g in state.groups))
        return make_plan(fleet=fleet.name, policy=self.name, state=state, digest=key, horizon_s=problem.horizon_s,
                         build=build, expected=expected, solver=solver, reasons=reasons,
                         replicas=to_core_replicas(targets, host, pools), routing=parts.routing,
                         queues=queue.orders)


@dataclass(frozen=True)
class _Parts:
    """What one planning call decided, handed to plan assembly."""

    problem: PlacementProblem
    placement: PlacementResult | None
    spot: list[SpotStep]
    targets: list[PlacedReplica]
    running: list[RunningReplica]
    rate_of: dict[str, float]
    routing: dict[str, dict[str, float]]
    packer: str


def _targets(problem: PlacementProblem, placement: PlacementResult | None, spot: list[SpotStep],
             running: list[RunningReplica], planned: list[RunningReplica], fleet: FleetSpec,
             healthy: set[str] | None, time_limit_s: float) -> tuple[list[PlacedReplica], list[str], str]:
    """Pack the placement and the spot steps onto GPUs; without a new placement, keep the on-demand replicas of the
    current plan (`planned`: the placement being carried out — its activations may still be waiting for drains,
    and keeping only what already runs would abandon them) and pack only the spot steps."""
    spot_pools = {problem.pools[s.pool_index].name for s in spot}
    current: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
    for r in running:
        if (c := problem.config_for(r.model, r.pool, r.tp)) is not None:
            current.setdefault(c.index, []).append((r.replica_id, r.gpu_ids))
    items = []
    for step in spot:  # whole GPUs per replica: the largest KV share
        kv = np.array([c.kv_max_gib for c in problem.configs]) * step.counts
        items += replica_items(problem, step.counts, kv, None, current)
    kept: list[PlacedReplica] = []
    if placement is None:
        kept = _kept(problem, planned, spot_pools)
        if not items:
            return kept, [], "kept"
    else:
        d = placement.decision
        items += replica_items(problem, d.replicas, d.kv_gib, d.capacity_rps, current)
    pools = [p for p in fleet.pools if placement is not None or p.name in spot_pools]
    gpu_ids = {p.name: [g for g in p.gpu_ids() if healthy is None or g in healthy] for p in pools}
    packed = pack(problem, items, gpu_ids, time_limit_s=time_limit_s)
    return kept + list(packed.replicas), [f"not placed: {x}" for x in packed.dropped], packed.packer


def _kept(problem: PlacementProblem, planned: list[RunningReplica], spot_pools: set[str]) -> list[PlacedReplica]:
    """The replicas of `planned` outside `spot_pools`, as placed."""
    return [PlacedReplica(r.replica_id, r.model, r.pool, r.gpu_type, r.tp, r.gpu_ids, r.kv_share_gib,
                          r.memory_gib, 0.0, c.index) for r in planned
            if (c := problem.config_for(r.model, r.pool, r.tp)) is not None and r.pool not in spot_pools]


def _packed_decision(problem: PlacementProblem, replicas: list[PlacedReplica]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts, KV GiB per config, shared GPUs per pool) of packed replicas, in the program's terms; replicas of
    pools closed to the program (spot pools liveput plans) are left out."""
    counts, kv = np.zeros(len(problem.configs)), np.zeros(len(problem.configs))
    shared: list[set[str]] = [set() for _ in problem.pools]
    for r in replicas:
        c = problem.configs[r.config_index]
        if problem.pools[c.pool_index].num_gpus == 0:
            continue
        counts[c.index] += 1
        if c.shares_gpus:
            kv[c.index] += r.kv_share_gib
            shared[c.pool_index].update(r.gpu_ids)
    return counts, kv, np.array([len(s) for s in shared], dtype=float)


def _slo_capacity(problem: PlacementProblem, r: RunningReplica) -> float | None:
    """req/s a running replica serves within SLO at the KV share it holds (None: no configuration for it)."""
    c = problem.config_for(r.model, r.pool, r.tp)
    return None if c is None else c.online.rate_at(r.kv_share_gib)


def _plannable_gpus(fleet: FleetSpec, state: FleetState, leaving: frozenset[str] = frozenset()) -> set[str] | None:
    """GPUs a plan may use: the healthy ones (all when no worker reports) minus those with a preemption notice
    (this plan's events and `leaving`, the notices of earlier plans whose GPUs have not gone yet)."""
    leaving = leaving | leaving_gpus(state)
    if not state.workers and not leaving:
        return None
    healthy = set(state.healthy_gpu_ids) if state.workers else set(fleet.gpu_ids())
    return healthy - leaving


def _running_counts(running: list[RunningReplica]) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, pool) → (tp, count) of the running replicas, at the TP degree most of them use."""
    by: dict[tuple[str, str], dict[int, int]] = {}
    for r in running:
        tps = by.setdefault((r.model, r.pool), {})
        tps[r.tp] = tps.get(r.tp, 0) + 1
    return {key: max(tps.items(), key=lambda kv: (kv[1], -kv[0])) for key, tps in by.items()}


def _expected_load(problem: PlacementProblem, targets: list[PlacedReplica],
                   routing: dict[str, dict[str, float]]) -> dict[str, float]:
    """replica → expected online req/s: its routing weight × its model's probability-weighted online demand."""
    mean = problem.weights @ problem.online_demand()
    index = {m.name: i for i, m in enumerate(problem.models)}
    return {t.replica_id: routing.get(t.model, {}).get(t.replica_id, 0.0) * float(mean[index[t.model]])
            for t in targets}


def _waiting_rps(state: FleetState, running: list[RunningReplica]) -> dict[str, float]:
    """Models with requests waiting and no replica, with the rate they need at least: the requests that wait
    spread over the observation window, or what arrived over it."""
    served = {r.model for r in running}
    asked = {e.model for e in state.events if e.kind == EventKind.REQUEST_FOR_INACTIVE_MODEL and e.model}
    out = {}
    for model in sorted(asked | {m for m, ld in state.load.items() if ld.num_waiting}):
        if model in served:
            continue
        load = state.load.get(model)
        waiting = load.num_waiting if load else 1
        out[model] = max(load.request_rate_per_s if load else 0.0, max(waiting, 1) / state.observation_window_s)
    return out


def _host_models(state: FleetState) -> frozenset[str]:
    from core.actions import Residency

    return frozenset(r.model for w in state.workers for r in w.replicas if r.residency == Residency.HOST)


def _why(problem: PlacementProblem, placement: PlacementResult | None) -> dict[str, str]:
    """model → a short reason: its demand in the busiest scenario and the capacity it was given."""
    if placement is None:
        return {}
    cap = placement.decision.capacity_rps
    online = problem.online_demand()
    out = {}
    for m, model in enumerate(problem.models):
        given = sum(cap[c.index] for c in problem.configs_of_model(m)) if cap is not None else 0.0
        out[model.name] = (f"demand up to {online[:, m].max():.2f} req/s across scenarios, "
                           f"SLO capacity placed {given:.2f} req/s")
    return out


def _plan_reasons(problem, placement, expected, num_targets: int, num_running: int) -> list[str]:
    if placement is None:
        return [f"placement reused: {num_targets} replicas kept (no event requires re-placing)"]
    out = [(f"placement: {num_targets} replicas (was {num_running}) by {placement.warm_start}, status "
            f"{placement.status}, {placement.time_s:.2f} s")]
    if expected is not None and expected.overall.unmet_requests_per_s > 1e-6:
        pen = problem.penalty_usd()
        worst = max(problem.classes, key=lambda c: expected.overall.per_class[c.name] < 1)
        out.append(f"demand exceeds SLO capacity: {expected.overall.unmet_requests_per_s:.2f} req/s expected unmet "
                   f"(priced at {pen.max():.4f} USD per request for the top class; lowest attainment in "
                   f"'{worst.name}': {expected.overall.per_class[worst.name]:.3f})")
    return out


_SOURCES = {"liveput": "liveput's step", "reactive": "SpotServe's reactive step, priced below liveput's",
            "current": "what runs, priced below liveput's step"}


def _why_spot(problem: PlacementProblem, spot: list[SpotStep]) -> dict[str, str]:
    """'model@pool' → why the spot tier gives the model its replicas on that spot pool."""
    out = {}
    for step in spot:
        pool = problem.pools[step.pool_index].name
        for m, model in enumerate(problem.models):
            n = sum(int(step.counts[c.index]) for c in problem.configs_of_model(m) if c.pool_index == step.pool_index)
            out[f"{model.name}@{pool}"] = (
                f"{n} replica(s) on spot pool {pool} ({_SOURCES[step.source]}): expected to serve "
                f"{float(problem.weights @ step.online_rps[:, m]):.2f} req/s online and "
                f"{float(problem.weights @ step.offline_rps[:, m]):.2f} req/s offline across availability scenarios")
    return out


def _solver_stats(placement, parts: _Parts, queue_name: str, stages: dict[str, float], total_s: float) -> SolverStats:
    packer = parts.packer + ("+liveput" if parts.spot else "")
    if placement is None:
        return SolverStats(name=f"reuse+{packer}+{queue_name}", status="heuristic", time_s=total_s, stages=stages)
    return SolverStats(name=f"highs+{packer}+{queue_name}", status=placement.status, objective=placement.objective_usd,
                       gap=placement.gap, time_s=total_s, num_variables=placement.num_variables,
                       num_constraints=placement.num_constraints, warm_start=placement.warm_start, stages=stages)
