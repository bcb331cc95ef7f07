"""The placement problem as plain data: candidate replica configurations, pools, scenarios, the current placement.

`build_problem(fleet, scenarios, ...)` turns core types into a `PlacementProblem` of frozen dataclasses and numpy
arrays; the Pyomo program (`placement.model`), the greedy heuristic and the naive formulation all read only this.

Aggregation: identical GPUs are counted, not enumerated. A configuration is (model, pool, TP degree) and its
first-stage decision is a replica *count*; TP = 1 replicas share GPUs (their weights + KV shares are packed into the
pool's memory and their load shares into its compute), TP > 1 replicas take whole GPUs of one node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
from scipy.special import comb

from core.catalog import GIB
from core.fleet import FleetSpec, PoolSpec, ServedModel, SLOClass
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from optimizers.capacity import CapacityTable, EngineLimits, LoadShape, SLOTarget, capacity_table

# Lengths assumed for a model before any request has told otherwise: a chat-like request (the Azure conversation
# trace averages ~1,150 prompt and ~210 output tokens).
DEFAULT_PROMPT_TOKENS = 1024.0
DEFAULT_OUTPUT_TOKENS = 256.0


@dataclass(frozen=True)
class PlacementSettings:
    """Prices and limits of the program. Money is USD; penalties are per request left unserved within SLO."""

    unmet_usd_per_request: float = 0.02  # priority-0 online request; class p pays this / (1 + p)
    offline_usd_per_request: float = 0.0004  # offline work is worth serving on spare capacity, rarely buying GPUs
    # The engines' offline budget beside online work (workers.sequence.SchedulerConfig.harvest_fraction): a replica
    # with online work runs offline work only while its steady decode iteration stays within this share of the
    # TPOT target. None: offline work takes all the compute online work leaves.
    harvest_fraction: float | None = 0.5
    churn_usd_per_replica: float = 0.25  # activation or removal of a replica (stability against flapping)
    resize_usd_per_gib: float = 0.001  # changing a replica's KV share
    # Surge additions (`PlacementProblem.grow_only`): removing a running replica, or taking KV from one, costs this
    # much — more than the requests a surge's horizon holds, so only a plan that cannot fit otherwise does it.
    surge_removal_usd: float = 50.0
    surge_shrink_usd_per_gib: float = 5.0
    host_cache_gib: float = 512.0  # host memory for warm (host-resident) weights, fleet-wide
    host_residency_usd: float = 1e-4  # per model kept warm (breaks ties toward fewer host copies)
    on_demand_max_load: float = 0.05  # models below this share of a replica's capacity may activate on demand
    reaction_s: float = 30.0  # a scenario's on-demand activation starts this long after its demand appears
    max_gpu_utilization: float = 0.90  # compute share a time-shared GPU may be loaded to
    # A running time-shared replica whose new KV share no longer fits on its GPU stays there with up to this much
    # less KV rather than move (a move reloads the weights and drops the KV and the requests it holds).
    keep_in_place_kv_cut: float = 0.25
    time_limit_s: float = 5.0
    mip_gap: float = 0.01
    max_mip_integers: int = 400  # run the full MIP after rounding only below this many integer variables
    # HiGHS checks its time limit only between phases of the root node; started with less time than this, the full
    # MIP overran a 1 s budget by up to 0.9 s (bench/solver_scaling.py) and rarely improved the incumbent.
    min_full_mip_s: float = 1.0
    # A program this small whose incumbent leaves more than `short_of_lp_rps` of online demand unserved beyond what
    # the LP relaxation leaves gets the full MIP whatever is left of the budget, in deterministic solves too: its
    # root takes milliseconds (a spot fleet's 11 integers: 23 ms; a sweep fleet's 46: 8-380 ms), and rounding plus
    # the LP neighbourhood had starved a model the fleet could serve (docs/optimizers.md, "Small programs").
    small_mip_integers: int = 64
    short_of_lp_rps: float = 0.05
    max_models_per_block: int = 48  # decomposition: models per sub-program when the fleet is larger
    # Deterministic solving (simulations, benchmarks): the phases up to the LP neighbourhood run and stop on work
    # limits — MIP nodes here, CP-SAT's deterministic time for packing — with time limits kept only as a safety
    # net, and the full MIP is left out except to rescue a small program (`solve_block`), so a plan depends on its
    # inputs and not on the machine's load. Live planning keeps wall-clock budgets.
    deterministic: bool = False
    deterministic_mip_nodes: int = 30
    limits: EngineLimits = field(default_factory=EngineLimits)


@dataclass(frozen=True)
class PoolInfo:
    """A pool as the program sees it: healthy GPUs and their usable memory."""

    name: str
    gpu_type: str
    num_gpus: int  # healthy GPUs the plan may use
    gpus_per_node: int
    usable_gib: float  # per GPU, after the memory policy's utilisation and reserve
    price_per_hour: float
    spot: bool
    # Per GPU, memory the program's aggregate count leaves unplanned: what packing replicas onto single GPUs could
    # not use in an earlier solve (`with_packing_reserve`). Packing itself still sees all of `usable_gib`.
    packing_reserve_gib: float = 0.0

    @property
    def num_nodes(self) -> int:
        return -(-self.num_gpus // self.gpus_per_node) if self.num_gpus else 0

    @property
    def plannable_gib(self) -> float:
        """Per GPU: the memory the program (and its heuristics) may count on for time-shared replicas (positive,
        so that divisions by it stay defined)."""
        return max(1e-6, self.usable_gib - self.packing_reserve_gib)


@dataclass(frozen=True)
class ReplicaConfig:
    """One way to serve a model: `tp` GPUs of `pool`. KV figures are per GPU, in GiB."""

    index: int
    model: str
    model_index: int
    pool_index: int
    tp: int
    weight_gib_per_gpu: float
    kv_min_gib: float  # one max-context sequence (what `FleetSpec.fit` requires)
    kv_max_gib: float  # all memory the weights leave
    online: CapacityTable  # SLO-feasible req/s against the KV share
    offline_rate_per_s: float  # throughput-bound req/s at the full share (no latency target)
    # req/s (online and offline together) whose steady decode fits the harvest budget: beside online work, offline
    # work gets this less the online load (PlacementSettings.harvest_fraction; the offline rate when None)
    harvest_rate_per_s: float
    activate_host_s: float
    activate_cold_s: float

    @property
    def shares_gpus(self) -> bool:
        """TP = 1 replicas may be time-shared with others on one GPU; TP groups take whole GPUs."""
        return self.tp == 1

    @property
    def online_rate_max(self) -> float:
        return self.online.max_rate_per_s


@dataclass(frozen=True)
class CurrentPlacement:
    """What runs now, aggregated like the decisions: replicas and KV (GiB, summed over replicas) per config."""

    replicas: np.ndarray  # (num_configs,) int
    kv_gib: np.ndarray  # (num_configs,) float
    host_models: frozenset[str] = frozenset()


@dataclass(frozen=True, eq=False)
class PlacementProblem:
    """Everything the placement program needs, indexed by configs, models, classes, pools and scenarios."""

    models: tuple[ServedModel, ...]
    classes: tuple[SLOClass, ...]
    pools: tuple[PoolInfo, ...]
    configs: tuple[ReplicaConfig, ...]
    weights: np.ndarray  # (S,) scenario probabilities
    demand_rps: np.ndarray  # (S, M, C) requests/s per model and class (the peak interval of the horizon)
    survival: np.ndarray  # (S, K) probability a replica of config k survives the scenario's availability
    available: np.ndarray  # (S, P) fewest GPUs available per pool over the horizon
    mean_output_tokens: np.ndarray  # (M,)
    horizon_s: float
    current: CurrentPlacement
    settings: PlacementSettings = field(default_factory=PlacementSettings)
    waiting: frozenset[int] = frozenset()  # models with requests waiting for a replica now: placed, not on demand
    # A surge re-placement between full ones: what runs keeps running with at least its KV share, and replicas and
    # KV are added into what is free — moving capacity out from under busy replicas is priced out
    # (`PlacementSettings.surge_removal_usd`, `surge_shrink_usd_per_gib`).
    grow_only: bool = False

    @property
    def num_scenarios(self) -> int:
        return int(self.weights.shape[0])

    def penalty_usd(self) -> np.ndarray:
        """(C,) price of one request of each class left unserved within its SLO."""
        s = self.settings
        return np.array([s.unmet_usd_per_request / (1 + c.priority) if c.online else s.offline_usd_per_request
                         for c in self.classes])

    def configs_of_pool(self, p: int) -> list[ReplicaConfig]:
        return self._by_pool.get(p, [])

    def configs_of_model(self, m: int) -> list[ReplicaConfig]:
        return self._by_model.get(m, [])

    def config_for(self, model: str, pool: str, tp: int) -> ReplicaConfig | None:
        """The config that serves `model` on `tp` GPUs of pool `pool` (what a running replica is an instance of);
        None where the program has none."""
        return self._by_key.get((model, pool, tp))

    @cached_property
    def _by_key(self) -> dict[tuple[str, str, int], ReplicaConfig]:
        return {(c.model, self.pools[c.pool_index].name, c.tp): c for c in self.configs}

    @cached_property
    def _by_pool(self) -> dict[int, list[ReplicaConfig]]:
        out: dict[int, list[ReplicaConfig]] = {}
        for c in self.configs:
            out.setdefault(c.pool_index, []).append(c)
        return out

    @cached_property
    def _by_model(self) -> dict[int, list[ReplicaConfig]]:
        out: dict[int, list[ReplicaConfig]] = {}
        for c in self.configs:
            out.setdefault(c.model_index, []).append(c)
        return out

    @cached_property
    def online_mask(self) -> np.ndarray:
        """(C,) which SLO classes are online (have latency targets)."""
        return np.array([c.online for c in self.classes], dtype=bool)

    def online_demand(self) -> np.ndarray:
        """(S, M) online requests/s."""
        return self.demand_rps[:, :, self.online_mask].sum(axis=2)

    @cached_property
    def on_demand(self) -> tuple[ReplicaConfig | None, ...]:
        """Per model, the config a scenario activates on demand: fewest GPUs, then the highest capacity."""
        return tuple(min(self.configs_of_model(m), key=lambda c: (c.tp, -c.online_rate_max), default=None)
                     for m in range(len(self.models)))

    @cached_property
    def rarely_used(self) -> frozenset[int]:
        """Models whose mean online demand is a small share of one on-demand replica: where activating on demand
        (Prism's path) competes with keeping a replica, and where host-vs-cold residency matters."""
        mean = self.weights @ self.online_demand()
        limit = self.settings.on_demand_max_load
        return frozenset(m for m, od in enumerate(self.on_demand)
                         if od is not None and mean[m] <= limit * od.online_rate_max and m not in self.waiting)

    def offline_demand(self) -> np.ndarray:
        return self.demand_rps[:, :, ~self.online_mask].sum(axis=2)


def with_packing_reserve(problem: PlacementProblem, shortfall_gib: np.ndarray, gpus: np.ndarray) -> PlacementProblem:
    """The problem with each pool's plannable memory per GPU lowered by what packing fell short there
    (`shortfall_gib[p]` GiB the program placed that no GPU could hold, spread over the `gpus[p]` GPUs it used).

    The program counts a pool's memory in aggregate; replicas live on single GPUs. Five replicas that each need
    more than half a GPU fit four GPUs' total memory but not four GPUs, and packing then cuts a busy replica's KV
    share (its SLO capacity). Re-solving with the shortfall reserved makes the program buy that room elsewhere — a
    GPU of another pool, or smaller shares it prices — instead of planning on memory no packing can deliver.
    """
    pools = tuple(replace(pool, packing_reserve_gib=pool.packing_reserve_gib + float(short) / max(int(n), 1))
                  if short > 1e-6 else pool for pool, short, n in zip(problem.pools, shortfall_gib, gpus))
    return replace(problem, pools=pools)


def survival_probability(num_gpus: int, num_preempted: int, tp: int) -> float:
    """P[a TP group of `tp` GPUs survives] when `num_preempted` of `num_gpus` are removed uniformly at random.

    Hypergeometric: all `tp` GPUs must be among the survivors, C(N − tp, k) / C(N, k).
    """
    if num_preempted <= 0:
        return 1.0
    if num_preempted > num_gpus - tp:
        return 0.0
    return float(comb(num_gpus - tp, num_preempted, exact=True) / comb(num_gpus, num_preempted, exact=True))


def pool_infos(fleet: FleetSpec, healthy: set[str] | None) -> tuple[PoolInfo, ...]:
    """Pools with only their healthy GPUs counted (all GPUs when `healthy` is None)."""
    out = []
    for p in fleet.pools:
        n = p.count if healthy is None else sum(1 for g in p.gpu_ids() if g in healthy)
        out.append(PoolInfo(p.name, p.gpu.name, n, p.gpus_per_node, fleet.usable_bytes_per_gpu(p.gpu) / GIB,
                            p.hourly_price, p.spot))
    return tuple(out)


def model_slo(fleet: FleetSpec, shares: np.ndarray, quantile: float) -> SLOTarget | None:
    """The tightest online SLO a model's traffic carries: one batch serves every class, so the strictest binds."""
    targets = [(c.ttft_s, c.tpot_s) for c, w in zip(fleet.slo_classes, shares) if c.online and w > 0]
    if not targets:
        targets = [(c.ttft_s, c.tpot_s) for c in fleet.slo_classes if c.online]
    if not targets:
        return None
    return SLOTarget(min(t[0] for t in targets), min(t[1] for t in targets), quantile)  # type: ignore[type-var]


def build_configs(fleet: FleetSpec, pools: tuple[PoolInfo, ...], loads: list[LoadShape], slos: list[SLOTarget | None],
                  book: LatencyBook, settings: PlacementSettings) -> tuple[ReplicaConfig, ...]:
    """Every (model, pool, TP) that fits: weights plus one max-context sequence per GPU, TP within a node."""
    configs: list[ReplicaConfig] = []
    specs: dict[str, PoolSpec] = {p.name: p for p in fleet.pools}
    for m_idx, model in enumerate(fleet.models):
        for p_idx, pool in enumerate(pools):
            gpu = specs[pool.name].gpu
            for tp in model.tp_options:
                row = fleet.fit(model, gpu, tp)
                if not row.fits or tp > pool.gpus_per_node or tp > pool.num_gpus:
                    continue
                lat = book.get(model.arch, gpu, tp)
                per_tok = model.arch.kv_bytes_per_token_per_gpu(tp)
                kv_min = model.max_context_tokens * per_tok / GIB
                kv_max = pool.usable_gib - row.weight_gib_per_gpu
                limits = replace(settings.limits, time_shared=tp == 1)  # TP = 1 replicas may share their GPU
                online = capacity_table(lat, loads[m_idx], per_tok, kv_min, kv_max, slos[m_idx], limits)
                offline = capacity_table(lat, loads[m_idx], per_tok, kv_min, kv_max, None, settings.limits)
                harvest = offline.max_rate_per_s
                if settings.harvest_fraction is not None and slos[m_idx] is not None:
                    budget = SLOTarget(math.inf, settings.harvest_fraction * slos[m_idx].tpot_s)
                    harvest = min(harvest, capacity_table(lat, loads[m_idx], per_tok, kv_min, kv_max, budget,
                                                          settings.limits).max_rate_per_s)
                configs.append(ReplicaConfig(
                    len(configs), model.name, m_idx, p_idx, tp, row.weight_gib_per_gpu, kv_min, kv_max, online,
                    offline.max_rate_per_s, harvest, lat.activate_from_host_s, lat.activate_from_cold_s))
    return tuple(configs)


def survival_matrix(pools: tuple[PoolInfo, ...], configs: tuple[ReplicaConfig, ...], available: np.ndarray) -> np.ndarray:
    """(S, K) survival per scenario and config from the scenario's fewest available GPUs per pool (S, P)."""
    out = np.ones((available.shape[0], len(configs)))
    for k, c in enumerate(configs):
        n = pools[c.pool_index].num_gpus
        for s in range(available.shape[0]):
            lost = max(0, n - int(available[s, c.pool_index]))
            out[s, k] = survival_probability(n, lost, c.tp)
    return out


def current_placement(configs: tuple[ReplicaConfig, ...], pools: tuple[PoolInfo, ...], replicas: list[tuple[str, str, int, float]],
                      host_models: frozenset[str]) -> CurrentPlacement:
    """Aggregate current replicas given as (model, pool, tp, kv_share_gib) into per-config counts."""
    index = {(c.model, pools[c.pool_index].name, c.tp): c.index for c in configs}
    counts = np.zeros(len(configs), dtype=int)
    kv = np.zeros(len(configs))
    for model, pool, tp, kv_gib in replicas:
        k = index.get((model, pool, tp))
        if k is not None:
            counts[k] += 1
            kv[k] += kv_gib
    return CurrentPlacement(counts, kv, host_models)


def scenario_arrays(fleet: FleetSpec, pools: tuple[PoolInfo, ...], scenarios: ScenarioSet,
                    horizon_intervals: int) -> tuple[np.ndarray, np.ndarray]:
    """Per scenario: peak demand (S, M, C) and fewest available GPUs (S, P) over the first intervals.

    Replicas are fixed for the placement horizon, so its busiest interval sizes them.
    """
    t = max(1, min(horizon_intervals, scenarios.num_intervals))
    return demand_by_interval(fleet, scenarios)[..., :t].max(axis=3), \
        available_by_interval(pools, scenarios)[..., :t].min(axis=2)


def demand_by_interval(fleet: FleetSpec, scenarios: ScenarioSet) -> np.ndarray:
    """(S, M, C, T) requests/s per fleet model, SLO class and interval; models the set does not name get none."""
    s_count, _, t_count = scenarios.demand_rps.shape
    demand = np.zeros((s_count, len(fleet.models), len(fleet.slo_classes), t_count))
    class_pos = [scenarios.slo_classes.index(c.name) if c.name in scenarios.slo_classes else -1
                 for c in fleet.slo_classes]
    for m_idx, model in enumerate(fleet.models):
        if model.name not in scenarios.models:
            continue
        j = scenarios.model_index(model.name)
        for c_idx, pos in enumerate(class_pos):
            if pos >= 0:
                demand[:, m_idx, c_idx, :] = scenarios.demand_rps[:, j, :] * scenarios.class_share[j, pos]
    return demand


def available_by_interval(pools: tuple[PoolInfo, ...], scenarios: ScenarioSet) -> np.ndarray:
    """(S, P, T) GPUs available per pool and interval, at most the pool's healthy GPUs (all of them for a pool the
    set does not name)."""
    s_count, t_count = scenarios.num_scenarios, scenarios.num_intervals
    avail = np.array([float(p.num_gpus) for p in pools])[None, :, None].repeat(s_count, 0).repeat(t_count, 2)
    for p_idx, pool in enumerate(pools):
        if pool.name in scenarios.pools:
            j = scenarios.pools.index(pool.name)
            avail[:, p_idx, :] = np.minimum(pool.num_gpus, scenarios.available_gpus[:, j, :])
    return avail


def load_shapes(fleet: FleetSpec, scenarios: ScenarioSet) -> list[LoadShape]:
    """Per fleet model: the scenario set's mean lengths (a model it does not name, or names with no length — one
    that has served nothing — gets the set's average over the models that have lengths)."""
    prompt, output = scenarios.mean_prompt_tokens, scenarios.mean_output_tokens
    known = (prompt > 0) & (output > 0)
    default = LoadShape(float(np.mean(prompt[known])), float(np.mean(output[known]))) if known.any() \
        else LoadShape(DEFAULT_PROMPT_TOKENS, DEFAULT_OUTPUT_TOKENS)
    out = []
    for model in fleet.models:
        j = scenarios.model_index(model.name) if model.name in scenarios.models else -1
        out.append(LoadShape(float(prompt[j]), float(output[j])) if j >= 0 and known[j] else default)
    return out


def build_problem(fleet: FleetSpec, scenarios: ScenarioSet, *, book: LatencyBook | None = None,
                  healthy: set[str] | None = None, current: list[tuple[str, str, int, float]] = (),  # type: ignore[assignment]
                  host_models: frozenset[str] = frozenset(), horizon_intervals: int = 1,
                  settings: PlacementSettings | None = None,
                  waiting_rps: dict[str, float] | None = None) -> PlacementProblem:
    """Turn a fleet, its scenarios and what runs now into a `PlacementProblem`.

    `current` lists the running replicas as (model, pool, tp, kv_share_gib); `healthy` the GPU ids the plan may use.
    `waiting_rps` names models whose requests wait for a replica now, with the online rate they need at least: the
    demand is there, so every scenario carries it and the program places a replica (or prices the misses) instead
    of counting on an on-demand activation — the activation this replan was called to make.
    """
    settings = settings or PlacementSettings()
    book = book or LatencyBook()
    pools = pool_infos(fleet, healthy)
    loads = load_shapes(fleet, scenarios)
    shares = _class_shares(fleet, scenarios)
    slos = [model_slo(fleet, shares[m], 0.99) for m in range(len(fleet.models))]
    configs = build_configs(fleet, pools, loads, slos, book, settings)
    demand, avail = scenario_arrays(fleet, pools, scenarios, horizon_intervals)
    waiting = {fleet.model_names.index(m): r for m, r in (waiting_rps or {}).items() if m in fleet.model_names}
    demand = _with_floor(demand, waiting, shares, [c.online for c in fleet.slo_classes])
    return PlacementProblem(
        models=fleet.models, classes=fleet.slo_classes, pools=pools, configs=configs,
        weights=np.asarray(scenarios.weights, float), demand_rps=demand,
        survival=survival_matrix(pools, configs, avail), available=avail,
        mean_output_tokens=np.array([ld.mean_output_tokens for ld in loads]),
        horizon_s=scenarios.interval_s * max(1, min(horizon_intervals, scenarios.num_intervals)),
        current=current_placement(configs, pools, list(current), host_models), settings=settings,
        waiting=frozenset(waiting))


def _with_floor(demand: np.ndarray, floor_rps: dict[int, float], shares: np.ndarray, online: list[bool]) -> np.ndarray:
    """(S, M, C) demand whose online part is at least `floor_rps[m]` for the models named, split by class share."""
    if not floor_rps:
        return demand
    out = demand.copy()
    mask = np.array(online)
    for m, rate in floor_rps.items():
        split = shares[m] * mask
        if split.sum() <= 0:
            continue
        want = rate * split / split.sum()
        out[:, m, :] = np.maximum(out[:, m, :], want[None, :])
    return out


def _class_shares(fleet: FleetSpec, scenarios: ScenarioSet) -> np.ndarray:
    """(M, C) class shares in fleet order (a model the set does not name: the first class only)."""
    out = np.zeros((len(fleet.models), len(fleet.slo_classes)))
    out[:, 0] = 1.0
    for m_idx, model in enumerate(fleet.models):
        if model.name in scenarios.models:
            j = scenarios.model_index(model.name)
            out[m_idx] = [scenarios.class_share[j, scenarios.slo_classes.index(c.name)]
                          if c.name in scenarios.slo_classes else 0.0 for c in fleet.slo_classes]
    return out
