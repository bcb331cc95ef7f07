"""Spot pools in the fleetwise plan: liveput decides each spot pool's replicas ahead of the on-demand placement.

Spot GPUs are cheap and may vanish. For each spot pool, Parcae's liveput (`optimizers.liveput`) chooses a
configuration — TP degree and replica count per model, each replica on whole GPUs — by its *expected* goodput over
the availability scenarios, net of GPU price and migration costs, over the scenario set's intervals; the plan
applies only the first step (receding horizon: the next plan re-solves from what then runs). Online requests are
valued at the top online class's unmet price, offline work at the offline price: offline jobs fill the compute
online serving leaves on each replica (and are paused first when a GPU is reclaimed, resuming from their KV
checkpoints: `optimizers.offline`).

Liveput sees the on-demand replicas of the current plan that ride on GPUs held anyway (`on_demand_base`: per model
their SLO capacity and offline throughput) as serving first, so a spot replica is bought only for what they leave
(`liveput.LiveputInput.uncovered`). The on-demand placement program then covers what the spot tier is not
expected to serve (`residual_problem`): per scenario, the demand minus the spot replicas' expected service,
E[min(demand, surviving replicas × rate)] under the scenario's survivor distribution — so a scenario in which spot GPUs vanish buys on-demand backup, and one in which
they survive does not. Spot pools are closed to the program (no GPUs), so every spot replica comes from the spot
tier's step.

Liveput's step is one proposal for the spot tier (`spot_alternatives`): SpotServe's reactive configuration and what
runs now are the others, and the planner keeps the one whose total — the program's expected cost of the residual as
packed, plus the spot GPUs and the migrations to them (`drain_usd`: a new replica may wait for a GPU to drain) — is
lowest (`FleetwisePlanner._place`, `_keep_or_move`).

Both see a reclaimed replica as the planner treats it (`SpotSettings`): the pool announces a removal `notice_s`
ahead, the planner replans on the notice and re-hosts the replica on a spare GPU, so a replica is lost only when
the pool keeps fewer GPUs than the configuration uses (`liveput.survival`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from optimizers.liveput import (
    Config,
    LiveputInput,
    LiveputPlan,
    SpotModel,
    config_value,
    gpus_of,
    migration_usd,
    plan_liveput,
    reactive_config,
    replica_value,
    survival_first,
    survivor_pmf,
    within_harvest,
)
from optimizers.placement.problem import PlacementProblem, ReplicaConfig
from optimizers.plan import RunningReplica


@dataclass(frozen=True)
class SpotStep:
    """The first step of one spot pool's liveput plan, in the placement problem's terms."""

    pool_index: int
    counts: np.ndarray  # (K,) replicas per config of the problem (non-zero only for this pool's configs)
    online_rps: np.ndarray  # (S, M) expected online req/s the step serves in each scenario (first interval)
    offline_rps: np.ndarray  # (S, M) expected offline req/s it serves in the compute online work leaves
    plan: LiveputPlan
    reason: str  # one line: what liveput chose and why
    source: str = "liveput"  # which rule proposed it: liveput, reactive (SpotServe) or current (what runs)
    gpu_usd_per_hour: float = 0.0  # what its GPUs cost
    migration_usd: float = 0.0  # value lost moving to it from what runs (`liveput.migration_usd`)

    def cost_usd(self, horizon_s: float) -> float:
        """Its GPUs over `horizon_s` plus the migration to it: what the on-demand program's objective leaves out."""
        return self.gpu_usd_per_hour * horizon_s / 3600 + self.migration_usd


def tier_usd(tier: list[SpotStep], horizon_s: float) -> float:
    """A spot tier's GPUs over `horizon_s` and the migrations to it, over its pools (`SpotStep.cost_usd`)."""
    return sum(s.cost_usd(horizon_s) for s in tier)


def spot_pool_indices(problem: PlacementProblem) -> list[int]:
    """Spot pools with healthy GPUs and at least one config."""
    return [p for p, pool in enumerate(problem.pools) if pool.spot and pool.num_gpus and problem.configs_of_pool(p)]


SPOT_POLICIES = ("liveput", "reactive")


@dataclass(frozen=True)
class SpotSettings:
    """How the planner handles a reclaimed spot GPU (`liveput.LiveputInput.reaction_s`, `notice_s`)."""

    notice_s: float = 30.0  # warning before a spot GPU leaves (SpotServe's grace period; GCP and Azure give 30 s)
    reaction_s: float = 1.0  # a preemption notice triggers a replan (the simulator's minimum gap between replans)
    # A replica that leaves a GPU another one needs first finishes what it runs (make-before-break); the new replica
    # waits that long, about one request's decode (a few hundred tokens at tens of ms each).
    drain_s: float = 20.0


@dataclass(frozen=True)
class OnDemandBase:
    """Per model (the problem's order) what on-demand replicas the plan keeps serve: SLO capacity and offline
    throughput, req/s."""

    online_rps: np.ndarray  # (M,)
    offline_rps: np.ndarray  # (M,)


def on_demand_base(problem: PlacementProblem, replicas: list[RunningReplica]) -> OnDemandBase | None:
    """What the on-demand replicas among `replicas` serve that spot replicas should not be bought for: what GPUs
    held anyway serve — replicas of spot-servable models whose every GPU is held for another replica: one of a
    model no spot pool can serve (a large model pins its GPUs), or the GPU's largest tenant (the replica it is held
    for). A replica with a GPU of its own, or the largest on its GPU, is left out: that is what a spot replica would
    replace, and once it leaves, the next smaller one becomes the tenant. Spot pools' replicas are left out. None
    when no replica qualifies."""
    if not spot_pool_indices(problem):
        return None
    models = {m.name: i for i, m in enumerate(problem.models)}
    spot_servable = {m for m in range(len(problem.models))
                     if any(problem.pools[c.pool_index].spot and c.online_rate_max > 0
                            for c in problem.configs_of_model(m))}
    configs = {r.replica_id: c for r in replicas if (c := problem.config_for(r.model, r.pool, r.tp)) is not None
               and not problem.pools[c.pool_index].spot}
    on_demand = [r for r in replicas if r.replica_id in configs and r.gpu_ids]
    pinned = {g for r in on_demand if models[r.model] not in spot_servable for g in r.gpu_ids}
    tenant: dict[str, RunningReplica] = {}  # GPU → its largest replica
    for r in on_demand:
        for g in r.gpu_ids:
            if g not in tenant or (r.memory_gib, r.replica_id) > (tenant[g].memory_gib, tenant[g].replica_id):
                tenant[g] = r
    online, offline = np.zeros(len(problem.models)), np.zeros(len(problem.models))
    for r in on_demand:
        m = models[r.model]
        if m in spot_servable and all(g in pinned or tenant[g] is not r for g in r.gpu_ids):
            c = configs[r.replica_id]
            online[m] += c.online.rate_at(r.kv_share_gib)
            offline[m] += c.offline_rate_per_s
    return OnDemandBase(online, offline) if online.any() or offline.any() else None


def plan_spot_pools(problem: PlacementProblem, demand: np.ndarray, available: np.ndarray, interval_s: float,
                    running: dict[tuple[str, str], tuple[int, int]], policy: str = "liveput",
                    settings: SpotSettings = SpotSettings(), base: OnDemandBase | None = None) -> list[SpotStep]:
    """Liveput per spot pool. `demand` is (S, M, C, T) req/s, `available` (S, P, T) GPUs; `running` maps
    (model, pool) to the (tp, count) that runs there now (the DP's starting point and migration reference).
    `policy="reactive"` replaces liveput by SpotServe's controller (`liveput.reactive_config`: per model the fewest
    replicas at the lowest-latency TP degree that meet the current mean rate on the GPUs up now, blind to the
    preemption risk and to migration costs) — the comparison of bench/plan_quality.py. Under it the on-demand backup
    is priced as before re-hosting was modelled (a reclaimed spot replica lost for the interval), so the baseline
    runs exactly as it was measured against, and it ignores `base` (SpotServe sizes the spot tier on its own).
    `base`: what the on-demand tier the plan keeps serves (`OnDemandBase`), which liveput leaves to it."""
    if policy not in SPOT_POLICIES:
        raise ValueError(f"spot policy {policy!r}: one of {', '.join(SPOT_POLICIES)}")
    return [_plan_pool(problem, p, demand, available, interval_s, running, policy, settings, base)
            for p in spot_pool_indices(problem)]


def _plan_pool(problem: PlacementProblem, p: int, demand: np.ndarray, available: np.ndarray, interval_s: float,
               running: dict[tuple[str, str], tuple[int, int]], policy: str, settings: SpotSettings,
               base: OnDemandBase | None) -> SpotStep:
    inp, options = liveput_input(problem, p, demand, available, interval_s, running,
                                 settings if policy == "liveput" else None, base if policy == "liveput" else None)
    if policy == "liveput":
        return _step(problem, p, inp, options, plan_liveput(inp), "liveput")
    return _step(problem, p, inp, options, _fixed_plan(inp, reactive_config(inp, 0)), "reactive")


SOURCES = ("liveput", "current", "reactive")


def spot_alternatives(problem: PlacementProblem, demand: np.ndarray, available: np.ndarray, interval_s: float,
                      running: dict[tuple[str, str], tuple[int, int]], settings: SpotSettings = SpotSettings(),
                      base: OnDemandBase | None = None, sources: tuple[str, ...] = SOURCES) -> list[list[SpotStep]]:
    """The spot tiers a full placement chooses among (`FleetwisePlanner._place`), each one step per spot pool:
    liveput's first step, SpotServe's reactive configuration and what runs now (when it still fits the pool), all
    valued with re-hosting and `base` as liveput is (what runs may be nothing: then the alternative is no spot
    replica at all); `sources` narrows them (liveput's is always there). Identical tiers once; liveput's first.

    Liveput values a spot replica by the requests it serves; what it is worth to the fleet is the on-demand capacity
    it saves, and that depends on what the on-demand tier would otherwise buy (docs/optimizers.md, "Choosing the spot
    tier with the on-demand one"). The placement program prices each alternative's residual, and the cheapest
    whole wins."""
    per_pool: list[dict[str, SpotStep]] = []
    for p in spot_pool_indices(problem):
        inp, options = liveput_input(problem, p, demand, available, interval_s, running, settings, base)
        plans = {"liveput": plan_liveput(inp)}
        if "reactive" in sources:
            plans["reactive"] = _fixed_plan(inp, reactive_config(inp, 0))
        current = inp.current or tuple((model.tp_options[0], 0) for model in inp.models)
        if "current" in sources and gpus_of(current) <= inp.num_gpus:
            plans["current"] = _fixed_plan(inp, current)
        steps = {source: _step(problem, p, inp, options, plan, source, settings.drain_s)
                 for source, plan in plans.items()}
        per_pool.append(steps)
    out: dict[tuple, list[SpotStep]] = {}
    for source in SOURCES:
        tier = [steps.get(source, steps["liveput"]) for steps in per_pool]
        out.setdefault(tuple(s.plan.path[0] for s in tier), tier)
    return list(out.values())


def _step(problem: PlacementProblem, p: int, inp: LiveputInput, options: list[dict[int, ReplicaConfig]],
          plan: LiveputPlan, source: str, drain_s: float = 0.0) -> SpotStep:
    """Spot pool p's step: the first configuration of `plan`, in the placement problem's terms."""
    counts = np.zeros(len(problem.configs), dtype=int)
    for m, (tp, n) in enumerate(plan.path[0]):
        if n:
            counts[options[m][tp].index] = n
    online, offline = expected_service(problem, inp, options, plan.path[0])
    used = gpus_of(plan.path[0])
    pool = problem.pools[p].name
    if source == "liveput":
        reason = (f"liveput on {pool}: {used} of {inp.num_gpus} GPUs, first step of a {inp.available.shape[1]}-interval "
                  f"plan worth {plan.liveput_usd:.2f} USD expected (migrations deducted), P[no replica lost in "
                  f"interval 1] = {plan.survival_first:.2f}")
    elif source == "reactive":
        reason = (f"reactive (SpotServe) on {pool}: {used} of {inp.num_gpus} GPUs, the fewest replicas that meet the "
                  f"current rate on the GPUs up now")
    else:
        reason = f"{pool} keeps what runs: {used} of {inp.num_gpus} GPUs"
    old = inp.current or plan.path[0]
    migration = migration_usd(inp, old, plan.path[0], 0) + drain_usd(inp, old, plan.path[0], drain_s)
    return SpotStep(p, counts, online, offline, plan, reason, source, used * inp.gpu_usd_per_hour, migration)


def drain_usd(inp: LiveputInput, old: Config, new: Config, drain_s: float) -> float:
    """Value lost while new replicas wait for GPUs that replicas leaving the pool free only once drained: the new
    replicas beyond the pool's free GPUs (their share of the GPUs added), each at the requests it would serve (its
    model's mean demand split over its replicas, at most its SLO capacity), for `drain_s`. Liveput's own migration
    cost counts the weight load alone."""
    added, value = 0, 0.0
    for m, ((tp0, n0), (tp1, n1)) in enumerate(zip(old, new)):
        new_n = n1 if tp1 != tp0 else max(0, n1 - n0)
        if not new_n:
            continue
        model = inp.models[m]
        rate = model.online_rate_per_s[model.tp_options.index(tp1)] if tp1 in model.tp_options else 0.0
        demand = float(inp.weights @ inp.online_rps[:, m, 0])
        added += new_n * tp1
        value += new_n * min(rate, demand / n1) * inp.online_usd_per_request * drain_s
    waiting = max(0, added - (inp.num_gpus - gpus_of(old)))
    return value * waiting / added if added else 0.0


def _fixed_plan(inp: LiveputInput, config: Config) -> LiveputPlan:
    """`config` as a one-step plan, valued like liveput's first interval (for the plan's reasons)."""
    one = replace(inp, available=inp.available[:, :1], online_rps=inp.online_rps[:, :, :1],
                  offline_rps=inp.offline_rps[:, :, :1])
    values = [[replica_value(one, m, o, 0, used=gpus_of(config)) for o in range(len(model.tp_options))]
              for m, model in enumerate(one.models)]
    value = config_value(values, one, config) - migration_usd(one, inp.current or config, config, 0)
    return LiveputPlan((config,), value, (value,), survival_first(inp, config), 1)


def liveput_input(problem: PlacementProblem, p: int, demand: np.ndarray, available: np.ndarray, interval_s: float,
                  running: dict[tuple[str, str], tuple[int, int]], settings: SpotSettings | None = SpotSettings(),
                  base: OnDemandBase | None = None) -> tuple[LiveputInput, list[dict[int, ReplicaConfig]]]:
    """The liveput input of spot pool p over every fleet model, and per model its configs there by TP degree;
    `settings` None: reclaimed replicas are not re-hosted within an interval; `base` None: no on-demand tier."""
    pool = problem.pools[p]
    options = [{c.tp: c for c in problem.configs_of_model(m) if c.pool_index == p} for m in range(len(problem.models))]
    models = tuple(_spot_model(problem.models[m].name, opts, problem.current.host_models,
                               problem.settings.harvest_fraction is not None)
                   for m, opts in enumerate(options))
    online = problem.online_mask
    rates = demand if demand.shape[0] else np.zeros((1, len(problem.models), len(problem.classes), 1))
    current = tuple(_current(running.get((problem.models[m].name, pool.name)), options[m], pool.num_gpus)
                    for m in range(len(problem.models)))
    penalty = problem.penalty_usd()
    return LiveputInput(
        num_gpus=pool.num_gpus, interval_s=interval_s, models=models, weights=problem.weights,
        available=np.minimum(available[:, p, :], pool.num_gpus), online_rps=rates[:, :, online, :].sum(axis=2),
        offline_rps=rates[:, :, ~online, :].sum(axis=2),
        online_usd_per_request=float(penalty[online].max(initial=0.0)),
        offline_usd_per_request=float(penalty[~online].max(initial=0.0)), gpu_usd_per_hour=pool.price_per_hour,
        current=current, reaction_s=None if settings is None else settings.reaction_s,
        notice_s=0.0 if settings is None else settings.notice_s,
        base_online_rps=None if base is None else base.online_rps,
        base_offline_rps=None if base is None else base.offline_rps), options


def _spot_model(name: str, options: dict[int, ReplicaConfig], host_models: frozenset[str],
                harvest: bool = True) -> SpotModel:
    """A model's replica options on the pool; a model that does not fit there gets a TP option of no value."""
    if not options:
        return SpotModel(name, (1,), (0.0,), (0.0,), (0.0,))
    tps = tuple(sorted(options))
    load = tuple(options[t].activate_host_s if name in host_models else options[t].activate_cold_s for t in tps)
    return SpotModel(name, tps, tuple(options[t].online_rate_max for t in tps),
                     tuple(options[t].offline_rate_per_s for t in tps), load,
                     tuple(options[t].harvest_rate_per_s for t in tps) if harvest else None)


def _current(now: tuple[int, int] | None, options: dict[int, ReplicaConfig], num_gpus: int) -> tuple[int, int]:
    """What runs now, at most what the pool's plannable GPUs hold (GPUs with a preemption notice are gone)."""
    if now is None or now[0] not in options:
        return (min(options, default=1), 0)
    return (now[0], min(now[1], num_gpus // now[0]))


def expected_service(problem: PlacementProblem, inp: LiveputInput, options: list[dict[int, ReplicaConfig]],
                     config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(S, M) expected online and offline req/s a configuration serves in each scenario at the first interval:
    E over the surviving replicas k of min(demand, k × rate), and offline work in the compute online work leaves —
    of the demand the base tier leaves (`LiveputInput.uncovered`)."""
    s_count, m_count = inp.online_rps.shape[:2]
    online, offline = np.zeros((s_count, m_count)), np.zeros((s_count, m_count))
    peak_online = problem.online_demand()
    peak_offline = problem.offline_demand()
    used = gpus_of(config)
    for m, (tp, n) in enumerate(config):
        if not n or tp not in options[m]:
            continue
        c = options[m][tp]
        load_s = inp.models[m].load_s[inp.models[m].tp_options.index(tp)]
        pmf = survivor_pmf(inp, tp, 0, load_s, used)[:, n, : n + 1]  # (S, k): P[k of the n replicas survive]
        k = np.arange(n + 1)[None, :]
        online_left, offline_left = inp.uncovered(m, peak_online[:, m], peak_offline[:, m])
        served = np.minimum(online_left[:, None], k * c.online_rate_max)
        spare = np.where(k > 0, k - served / max(c.online_rate_max, 1e-12), 0.0) * c.offline_rate_per_s
        if problem.settings.harvest_fraction is not None:
            spare = within_harvest(spare, k, served, online_left, c.harvest_rate_per_s)
        online[:, m] = (pmf * served).sum(axis=1)
        offline[:, m] = (pmf * np.minimum(offline_left[:, None], spare)).sum(axis=1)
    return online, offline


def residual_problem(problem: PlacementProblem, steps: list[SpotStep]) -> PlacementProblem:
    """The on-demand program's problem: spot pools closed, each scenario's demand less the spot tier's expected
    service (spread over a model's classes in proportion to their demand)."""
    if not steps:
        return problem
    online_mask = problem.online_mask
    demand = problem.demand_rps.copy()
    for mask, served in ((online_mask, sum(s.online_rps for s in steps)),
                         (~online_mask, sum(s.offline_rps for s in steps))):
        total = demand[:, :, mask].sum(axis=2)
        keep = np.divide(np.maximum(total - served, 0.0), total, out=np.zeros_like(total), where=total > 0)
        demand[:, :, mask] *= keep[:, :, None]
    closed = {s.pool_index for s in steps}
    pools = tuple(replace(pool, num_gpus=0) if p in closed else pool for p, pool in enumerate(problem.pools))
    return replace(problem, demand_rps=demand, pools=pools)
