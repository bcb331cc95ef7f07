"""Liveput for spot pools (Parcae, NSDI'24) with offline work on harvested capacity (ConServe, arXiv 2410.01228).

A configuration of a spot pool gives each model a TP degree and a replica count. In scenario s at interval t the
pool holds A of its N GPUs; the N − A missing ones are a uniformly random subset, so a TP group of t GPUs survives
with probability C(N − t, N − A) / C(N, N − A) (hypergeometric, closed form) and the surviving replicas of a model
are Binomial(n, p) (exactly the hypergeometric count for TP = 1). The value of a configuration in an interval is
its *expected* goodput over the scenarios — online requests served up to demand, then offline work in the compute
online serving leaves (offline is preempted first and resumes from its KV checkpoints, so it costs no recompute) —
minus the GPUs' price. Liveput = value − migration cost from the previous interval's configuration (new replicas
load weights; a TP change reloads every replica of the model and recomputes in-flight KV; a removed replica's
requests migrate).

Candidates per interval: for each availability quantile (min, quartiles, max) of its scenarios, the value-maximising allocation (a knapsack over
models, exact by dynamic programming over GPUs), plus the current configuration. A dynamic program over intervals ×
candidates picks the path of highest total liveput; the planner applies its first step and replans next interval
(receding horizon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from optimizers.placement.problem import survival_probability


@dataclass(frozen=True)
class SpotModel:
    """A model the spot pool may serve, with its per-replica capacities at each TP option."""

    name: str
    tp_options: tuple[int, ...]
    online_rate_per_s: tuple[float, ...]  # SLO capacity of one replica per TP option (req/s)
    offline_rate_per_s: tuple[float, ...]  # throughput of one replica per TP option (req/s)
    load_s: tuple[float, ...]  # weight load time (host → GPU) per TP option


@dataclass(frozen=True)
class LiveputInput:
    """Spot pool size, models, per-scenario availability and demand over T intervals."""

    num_gpus: int
    interval_s: float
    models: tuple[SpotModel, ...]
    weights: np.ndarray  # (S,)
    available: np.ndarray  # (S, T) GPUs available
    online_rps: np.ndarray  # (S, M, T)
    offline_rps: np.ndarray  # (S, M, T)
    online_usd_per_request: float = 0.02
    offline_usd_per_request: float = 0.002
    gpu_usd_per_hour: float = 1.0
    current: tuple[tuple[int, int], ...] | None = None  # (tp, count) per model now


Config = tuple[tuple[int, int], ...]  # (tp, count) per model; count 0 = not served here


@dataclass(frozen=True)
class LiveputPlan:
    path: tuple[Config, ...]  # one configuration per interval; path[0] is applied now
    liveput_usd: float  # expected value of the path, migrations deducted
    value_by_interval: tuple[float, ...]
    survival_first: float  # P[every replica of the first configuration survives interval 1]
    num_candidates: int


def survivor_pmf(inp: LiveputInput, tp: int, t: int) -> np.ndarray:
    """(S, n_max + 1, n_max + 1): P[k of n replicas of TP `tp` survive] per scenario at interval t."""
    n_max = inp.num_gpus // tp
    p = np.array([survival_probability(inp.num_gpus, max(0, inp.num_gpus - int(a)), tp) for a in inp.available[:, t]])
    k = np.arange(n_max + 1)
    return stats.binom.pmf(k[None, None, :], k[None, :, None], p[:, None, None])


def replica_value(inp: LiveputInput, m: int, o: int, t: int, pmf: np.ndarray | None = None) -> np.ndarray:
    """(n_max + 1,) expected USD per interval of 0..n_max replicas of model m at TP option o in interval t."""
    model = inp.models[m]
    tp = model.tp_options[o]
    pmf = survivor_pmf(inp, tp, t) if pmf is None else pmf
    k = np.arange(pmf.shape[1])
    on_cap = k[None, :] * model.online_rate_per_s[o]  # (1, k)
    online = np.minimum(inp.online_rps[:, m, t][:, None], on_cap)  # (S, k)
    spare = np.where(on_cap > 0, 1 - online / np.maximum(on_cap, 1e-12), 0) * k * model.offline_rate_per_s[o]
    offline = np.minimum(inp.offline_rps[:, m, t][:, None], spare)
    usd = (online * inp.online_usd_per_request + offline * inp.offline_usd_per_request) * inp.interval_s
    value = np.einsum("s,snk,sk->n", inp.weights, pmf, usd)
    return value - k * tp * inp.gpu_usd_per_hour * inp.interval_s / 3600


def best_allocation(values: list[list[np.ndarray]], inp: LiveputInput, gpus: int) -> Config:
    """Knapsack over models (exact DP over GPUs): which TP and count per model maximise the summed value."""
    best = np.zeros(gpus + 1)
    choice: list[np.ndarray] = []
    for m, model in enumerate(inp.models):
        new = best.copy()
        pick = np.full((gpus + 1, 2), -1)
        for o, tp in enumerate(model.tp_options):
            v = values[m][o]
            for n in range(1, min(len(v) - 1, gpus // tp) + 1):
                cand = np.full(gpus + 1, -np.inf)
                cand[n * tp:] = best[: gpus + 1 - n * tp] + v[n]
                better = cand > new
                new = np.where(better, cand, new)
                pick[better] = (o, n)
        choice.append(pick)
        best = new
    out: list[tuple[int, int]] = [(inp.models[m].tp_options[0], 0) for m in range(len(inp.models))]
    g = int(np.argmax(best))
    for m in reversed(range(len(inp.models))):
        o, n = choice[m][g]
        if o >= 0:
            tp = inp.models[m].tp_options[o]
            out[m] = (tp, int(n))
            g -= tp * int(n)
    return tuple(out)


def migration_usd(inp: LiveputInput, old: Config, new: Config, t: int) -> float:
    """Value lost while moving from `old` to `new`: load time of new replicas (regroup), all replicas of a model
    whose TP changes (repartition), and a copy of state for removed replicas (their in-flight work moves)."""
    cost = 0.0
    for m, ((tp0, n0), (tp1, n1)) in enumerate(zip(old, new)):
        model = inp.models[m]
        o = model.tp_options.index(tp1) if tp1 in model.tp_options else 0
        rate = model.online_rate_per_s[o] * inp.online_usd_per_request
        demand = float(inp.weights @ inp.online_rps[:, m, t])
        if tp0 != tp1 and n0 and n1:
            cost += min(n1 * model.online_rate_per_s[o], demand) * inp.online_usd_per_request * model.load_s[o] * 2
        elif n1 > n0:
            cost += (n1 - n0) * rate * model.load_s[o]
        elif n1 < n0:
            cost += (n0 - n1) * rate * model.load_s[o] * 0.25  # draining: KV copy to the remaining replicas
    return cost


def config_value(values_t: list[list[np.ndarray]], inp: LiveputInput, config: Config) -> float:
    total = 0.0
    for m, (tp, n) in enumerate(config):
        model = inp.models[m]
        o = model.tp_options.index(tp) if tp in model.tp_options else 0
        total += float(values_t[m][o][min(n, len(values_t[m][o]) - 1)])
    return total


def plan_liveput(inp: LiveputInput) -> LiveputPlan:
    """Candidates per interval, then the DP over intervals × candidates (module docstring)."""
    horizon = inp.available.shape[1]
    tps = sorted({tp for model in inp.models for tp in model.tp_options})
    pmfs = {(tp, t): survivor_pmf(inp, tp, t) for tp in tps for t in range(horizon)}
    values = [[[replica_value(inp, m, o, t, pmfs[tp, t]) for o, tp in enumerate(model.tp_options)]
               for m, model in enumerate(inp.models)] for t in range(horizon)]
    cands: set[Config] = set()
    for t in range(horizon):
        levels = np.quantile(inp.available[:, t], (0.0, 0.25, 0.5, 0.75, 1.0), method="nearest")
        for level in sorted(set(int(a) for a in levels)):
            cands.add(best_allocation(values[t], inp, min(level, inp.num_gpus)))
    current = inp.current or tuple((mdl.tp_options[0], 0) for mdl in inp.models)
    cands.add(current)
    configs = sorted(cands)
    gain = np.array([[config_value(values[t], inp, c) for c in configs] for t in range(horizon)])
    mig = np.array([[migration_usd(inp, a, b, 0) for b in configs] for a in configs])
    score = gain[0] - np.array([migration_usd(inp, current, c, 0) for c in configs])
    back = np.zeros((horizon, len(configs)), dtype=int)
    for t in range(1, horizon):
        total = score[:, None] - mig + gain[t][None, :]
        back[t] = np.argmax(total, axis=0)
        score = total[back[t], np.arange(len(configs))]
    last = int(np.argmax(score))
    path = [last]
    for t in range(horizon - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    path.reverse()
    first = configs[path[0]]
    used = sum(tp * n for tp, n in first)
    lost0 = inp.num_gpus - inp.available[:, 0].astype(int)
    survive = float(sum(w * survival_probability(inp.num_gpus, int(k), used) if used else w
                        for w, k in zip(inp.weights, lost0)))
    return LiveputPlan(tuple(configs[i] for i in path), float(score[last]),
                       tuple(float(gain[t][i]) for t, i in enumerate(path)), survive, len(configs))


def reactive_config(inp: LiveputInput, t: int = 0) -> Config:
    """SpotServe-style baseline: per model the fewest replicas (lowest-latency TP first) whose capacity meets the
    current mean rate on the GPUs available now, ignoring preemption risk."""
    gpus = int(np.min(inp.available[:, t]))
    out = []
    for m, model in enumerate(inp.models):
        rate = float(inp.weights @ inp.online_rps[:, m, t])
        o = int(np.argmax(model.tp_options))
        tp = model.tp_options[o]
        n = int(np.ceil(rate / max(model.online_rate_per_s[o], 1e-9))) if rate > 0 else 0
        n = min(n, gpus // tp)
        gpus -= n * tp
        out.append((tp, n))
    return tuple(out)
