"""Liveput for spot pools (Parcae, NSDI'24) with offline work on harvested capacity (ConServe, arXiv 2410.01228).

A configuration of a spot pool gives each model a TP degree and a replica count. In scenario s at interval t the
pool holds A of its N GPUs; the N − A missing ones are a uniformly random subset, so a TP group of t GPUs survives
with probability C(N − t, N − A) / C(N, N − A) (hypergeometric, closed form) and the surviving replicas of a model
are Binomial(n, p) (exactly the hypergeometric count for TP = 1). The value of a configuration in an interval is
its *expected* goodput over the scenarios — online requests served up to demand, then offline work in the compute
online serving leaves (offline is preempted first and resumes from its KV checkpoints, so it costs no recompute) —
minus the GPUs' price. Liveput = value − migration cost from the previous interval's configuration (new replicas
load weights; a TP change reloads every replica of the model and recomputes in-flight KV; a removed replica drains,
which costs nothing).

Serving differs from Parcae's training jobs in what a preemption costs. A training pipeline halts when one stage is
reclaimed; a serving replica is one of several, and with a preemption notice (SpotServe's 30 s grace period) the
receding-horizon planner re-hosts it on a spare GPU of the pool before the old one leaves. With `reaction_s` set, a
replica is therefore lost for the interval only when the pool has no spare GPU left for it: of the G GPUs a
configuration uses, max(0, G − A) are lost (uniformly, hypergeometric again), and a replica that is re-hosted loses
only max(0, reaction + load − notice) seconds plus the handover of its in-flight work. Without it (`None`) every
reclaimed replica stays lost for the interval, as in Parcae. This is what keeps liveput from buying hedge replicas
against losses the planner would repair within seconds (docs/optimizers.md, "Liveput in serving").

A spot pool is one tier of a fleet. What the on-demand tier already holds (`base_online_rps`, `base_offline_rps`:
per model the SLO capacity and offline throughput of replicas on GPUs that are paid for anyway) serves first, and a
spot replica is valued only for the demand it leaves: a small model that fits beside the large one on an on-demand
GPU is not worth a spot GPU of its own, and offline work the on-demand replicas' idle compute absorbs is no reason
to buy one either.

Candidates per interval: for each availability quantile (min, quartiles, max) of its scenarios, the value-maximising
allocation (a knapsack over models, exact by dynamic programming over GPUs, valued as if it used that many GPUs),
plus the current configuration. A dynamic program over intervals × candidates (each valued at the GPUs it uses)
picks the path of highest total liveput; the planner applies its first step and replans next interval (receding
horizon).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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
    # req/s (online and offline together) within the engines' harvest budget per TP option; None: offline work
    # takes all the compute online work leaves
    harvest_rate_per_s: tuple[float, ...] | None = None


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
    # Re-hosting of reclaimed replicas (module docstring): the planner's reaction to a preemption notice (s), None
    # when a reclaimed replica stays lost for the interval (Parcae); and the notice the pool gives (s).
    reaction_s: float | None = None
    notice_s: float = 0.0
    # What other tiers already serve per model (module docstring): (M,) online SLO capacity, req/s, and the offline
    # throughput of the same replicas with no online load; None: nothing.
    base_online_rps: np.ndarray | None = None
    base_offline_rps: np.ndarray | None = None

    def uncovered(self, m: int, online: np.ndarray, offline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model m's online and offline demand (req/s, any shape) that the base tier leaves: online beyond its SLO
        capacity, offline beyond the throughput its online load leaves idle."""
        if self.base_online_rps is None:
            return online, offline
        cap = float(self.base_online_rps[m])
        off = 0.0 if self.base_offline_rps is None else float(self.base_offline_rps[m])
        busy = np.minimum(online, cap) / cap if cap > 0 else np.ones_like(online)
        return np.maximum(online - cap, 0.0), np.maximum(offline - (1.0 - busy) * off, 0.0)

    def downtime_s(self, load_s: float) -> float:
        """Seconds a re-hosted replica serves nothing: the reload not hidden by the notice, plus the handover of its
        in-flight work (their KV copied to the new GPU, taken as a quarter of the load time)."""
        reaction = self.reaction_s or 0.0
        return min(self.interval_s, max(0.0, reaction + load_s - self.notice_s) + 0.25 * load_s)


Config = tuple[tuple[int, int], ...]  # (tp, count) per model; count 0 = not served here


@dataclass(frozen=True)
class LiveputPlan:
    path: tuple[Config, ...]  # one configuration per interval; path[0] is applied now
    liveput_usd: float  # expected value of the path, migrations deducted
    value_by_interval: tuple[float, ...]
    survival_first: float  # P[every replica of the first configuration survives interval 1]
    num_candidates: int


def survival(inp: LiveputInput, tp: int, t: int, load_s: float = 0.0, used: int | None = None) -> np.ndarray:
    """(S,) P[a replica of TP `tp` serves through interval t] per scenario, its downtime counted as a lost share.

    The pool's N GPUs lose N − A uniformly at random. Without re-hosting the replica survives only if none of its
    GPUs is among them. With re-hosting, of the `used` GPUs of the configuration only max(0, used − A) find no spare
    GPU (those replicas are lost); a replica that was hit but re-hosted loses `downtime_s` of the interval."""
    levels = np.floor(inp.available[:, t]).astype(int)
    untouched = np.array([_survival(inp.num_gpus, max(0, inp.num_gpus - a), tp) for a in levels])
    if inp.reaction_s is None:
        return untouched
    g = max(inp.num_gpus if used is None else used, tp)
    kept = np.array([_survival(g, max(0, g - a), tp) for a in levels])
    down = inp.downtime_s(load_s) / inp.interval_s
    return kept - np.maximum(kept - untouched, 0.0) * down


def survivor_pmf(inp: LiveputInput, tp: int, t: int, load_s: float = 0.0, used: int | None = None) -> np.ndarray:
    """(S, n_max + 1, n_max + 1): P[k of n replicas of TP `tp` survive] per scenario at interval t (`survival`)."""
    n_max = inp.num_gpus // tp
    return np.stack([_binomial_table(round(float(p), 12), n_max) for p in survival(inp, tp, t, load_s, used)])


@lru_cache(maxsize=4096)
def _survival(num_gpus: int, num_lost: int, tp: int) -> float:
    return survival_probability(num_gpus, num_lost, tp)


@lru_cache(maxsize=4096)
def _binomial_table(p: float, n_max: int) -> np.ndarray:
    """(n_max + 1, n_max + 1): [n, k] = P[k of n survive], each independently with probability p (scenarios share
    survival probabilities: each table is computed once)."""
    k = np.arange(n_max + 1)
    return stats.binom.pmf(k[None, :], k[:, None], p)


def replica_value(inp: LiveputInput, m: int, o: int, t: int, pmf: np.ndarray | None = None,
                  used: int | None = None) -> np.ndarray:
    """(n_max + 1,) expected USD per interval of 0..n_max replicas of model m at TP option o in interval t, in a
    configuration of `used` GPUs (what re-hosting depends on; default the whole pool)."""
    model = inp.models[m]
    tp = model.tp_options[o]
    pmf = survivor_pmf(inp, tp, t, model.load_s[o], used) if pmf is None else pmf
    usd = served_usd(inp, m, o, t, pmf.shape[1] - 1)
    return np.einsum("s,snk,sk->n", inp.weights, pmf, usd) - gpu_usd(inp, tp, pmf.shape[1] - 1)


def served_usd(inp: LiveputInput, m: int, o: int, t: int, n_max: int) -> np.ndarray:
    """(S, n_max + 1): USD per interval that k surviving replicas of model m at TP option o serve in each scenario
    at interval t — online requests up to the demand the base tier leaves, then offline work in the compute they
    leave."""
    model = inp.models[m]
    k = np.arange(n_max + 1)
    on_cap = k[None, :] * model.online_rate_per_s[o]  # (1, k)
    online_left, offline_left = inp.uncovered(m, inp.online_rps[:, m, t], inp.offline_rps[:, m, t])
    online = np.minimum(online_left[:, None], on_cap)  # (S, k)
    spare = np.where(on_cap > 0, 1 - online / np.maximum(on_cap, 1e-12), 0) * k * model.offline_rate_per_s[o]
    if model.harvest_rate_per_s is not None:
        spare = within_harvest(spare, k, online, online_left, model.harvest_rate_per_s[o])
    offline = np.minimum(offline_left[:, None], spare)
    return (online * inp.online_usd_per_request + offline * inp.offline_usd_per_request) * inp.interval_s


def within_harvest(spare: np.ndarray, k: np.ndarray, online: np.ndarray, online_left: np.ndarray,
                   harvest_rate: float) -> np.ndarray:
    """Offline req/s k replicas serve beside `online` req/s under the engines' harvest budget: where the scenario
    has online demand, what `harvest_rate` per replica leaves of it (`ReplicaConfig.harvest_rate_per_s`); else
    `spare`, the compute online work leaves."""
    return np.where(online_left[:, None] > 0, np.maximum(0.0, k * harvest_rate - online), spare)


def gpu_usd(inp: LiveputInput, tp: int, n_max: int) -> np.ndarray:
    """(n_max + 1,): the GPUs' price per interval of 0..n_max replicas of TP `tp`."""
    return np.arange(n_max + 1) * tp * inp.gpu_usd_per_hour * inp.interval_s / 3600


def best_allocation(values: list[list[np.ndarray]], inp: LiveputInput, gpus: int) -> Config:
    """Knapsack over models (exact DP over GPUs): which TP and count per model maximise the summed value.

    One max-plus convolution per model and TP option, vectorised: `cand[n, g] = best[g − n·tp] + v[n]`.
    """
    best = np.zeros(gpus + 1)
    choices: list[tuple[np.ndarray, np.ndarray]] = []
    g = np.arange(gpus + 1)
    for model, options in zip(inp.models, values):
        new, pick_o, pick_n = best.copy(), np.full(gpus + 1, -1), np.zeros(gpus + 1, dtype=int)
        for o, (tp, v) in enumerate(zip(model.tp_options, options)):
            n = np.arange(1, min(len(v) - 1, gpus // tp) + 1)
            if not len(n):
                continue
            src = g[None, :] - n[:, None] * tp  # (N, G) GPUs left for the models before this one
            cand = np.where(src >= 0, best[np.maximum(src, 0)] + v[n][:, None], -np.inf)
            top = np.argmax(cand, axis=0)
            better = cand[top, g] > new
            new = np.where(better, cand[top, g], new)
            pick_o, pick_n = np.where(better, o, pick_o), np.where(better, n[top], pick_n)
        choices.append((pick_o, pick_n))
        best = new
    out: list[tuple[int, int]] = [(m.tp_options[0], 0) for m in inp.models]
    left = int(np.argmax(best))
    for m in reversed(range(len(inp.models))):
        o, n = int(choices[m][0][left]), int(choices[m][1][left])
        if o >= 0:
            tp = inp.models[m].tp_options[o]
            out[m] = (tp, n)
            left -= tp * n
    return tuple(out)


def migration_usd(inp: LiveputInput, old: Config, new: Config, t: int) -> float:
    """Value lost while moving from `old` to `new`: load time of new replicas (regroup) and of all replicas of a
    model whose TP changes (repartition: in-flight KV is recomputed). A removed replica costs nothing: it drains
    (takes no new requests, finishes those it runs) before it leaves, so shedding a replica the forecast no longer
    needs is held back only by what adding it again within the horizon would cost."""
    return float(migration_matrix(inp, [old], [new], t)[0, 0])


def migration_matrix(inp: LiveputInput, olds: list[Config], news: list[Config], t: int) -> np.ndarray:
    """(len(olds), len(news)) `migration_usd` of every pair, vectorised over pairs and models."""
    tp0, n0 = (np.array(olds, dtype=float)[..., i] for i in (0, 1))  # (A, M)
    tp1, n1 = (np.array(news, dtype=float)[..., i] for i in (0, 1))  # (B, M)
    rate, load_s = _option_arrays(inp, news)  # (B, M) per-replica online rate and load time of the new TP
    demand = inp.weights @ inp.online_rps[:, :, t]  # (M,)
    usd = inp.online_usd_per_request
    tp0, n0 = tp0[:, None, :], n0[:, None, :]
    repartition = (tp0 != tp1[None]) & (n0 > 0) & (n1[None] > 0)
    cost = np.where(repartition, np.minimum(n1 * rate, demand)[None] * usd * load_s[None] * 2,
                    np.maximum(n1[None] - n0, 0.0) * (rate * usd * load_s)[None])
    return cost.sum(axis=2)


def _option_arrays(inp: LiveputInput, configs: list[Config]) -> tuple[np.ndarray, np.ndarray]:
    """(C, M) online rate per replica and load time of each config's TP choice per model."""
    rate = np.zeros((len(configs), len(inp.models)))
    load = np.zeros_like(rate)
    for m, model in enumerate(inp.models):
        for c, config in enumerate(configs):
            tp = config[m][0]
            o = model.tp_options.index(tp) if tp in model.tp_options else 0
            rate[c, m], load[c, m] = model.online_rate_per_s[o], model.load_s[o]
    return rate, load


def config_value(values_t: list[list[np.ndarray]], inp: LiveputInput, config: Config) -> float:
    total = 0.0
    for m, (tp, n) in enumerate(config):
        model = inp.models[m]
        o = model.tp_options.index(tp) if tp in model.tp_options else 0
        total += float(values_t[m][o][min(n, len(values_t[m][o]) - 1)])
    return total


class _Values:
    """Replica values (`replica_value`) of every model and TP option per interval, computed once per re-hosting
    situation: without re-hosting they do not depend on the configuration; with it, only on how many of its GPUs
    exceed the fewest GPUs any scenario keeps up (below that, every reclaimed replica finds a spare GPU)."""

    def __init__(self, inp: LiveputInput) -> None:
        self.inp = inp
        self._cache: dict[tuple[int, int], list[list[np.ndarray]]] = {}
        self._usd: dict[tuple[int, int, int], np.ndarray] = {}  # (interval, model, option) → served_usd
        # Options that share a TP degree and a load time share their survivor tables: valued together.
        self._groups: dict[tuple[int, float], list[tuple[int, int]]] = {}
        for m, model in enumerate(inp.models):
            for o, tp in enumerate(model.tp_options):
                self._groups.setdefault((tp, model.load_s[o]), []).append((m, o))

    def at(self, t: int, used: int) -> list[list[np.ndarray]]:
        """What `replica_value` gives for every model and option at interval t in a configuration of `used` GPUs."""
        inp = self.inp
        key = -1 if inp.reaction_s is None else max(used, int(np.floor(inp.available[:, t]).min()))
        if (t, key) not in self._cache:
            out: list[list[np.ndarray]] = [[np.zeros(0)] * len(model.tp_options) for model in inp.models]
            for (tp, load_s), members in self._groups.items():
                pmf = survivor_pmf(inp, tp, t, load_s, None if key < 0 else key)
                n_max = pmf.shape[1] - 1
                stacked = np.stack([self._served(t, m, o, n_max) for m, o in members])
                values = np.einsum("s,snk,gsk->gn", inp.weights, pmf, stacked) - gpu_usd(inp, tp, n_max)
                for (m, o), v in zip(members, values):
                    out[m][o] = v
            self._cache[t, key] = out
        return self._cache[t, key]

    def _served(self, t: int, m: int, o: int, n_max: int) -> np.ndarray:
        """`served_usd`, once per interval and option (it does not depend on the GPUs a configuration uses)."""
        if (t, m, o) not in self._usd:
            self._usd[t, m, o] = served_usd(self.inp, m, o, t, n_max)
        return self._usd[t, m, o]


def plan_liveput(inp: LiveputInput) -> LiveputPlan:
    """Candidates per interval, then the DP over intervals × candidates (module docstring)."""
    horizon = inp.available.shape[1]
    values = _Values(inp)
    cands: set[Config] = set()
    for t in range(horizon):
        levels = np.quantile(inp.available[:, t], (0.0, 0.25, 0.5, 0.75, 1.0), method="nearest")
        for level in sorted({min(int(a), inp.num_gpus) for a in levels}):
            cands.add(best_allocation(values.at(t, level), inp, level))
    current = inp.current or tuple((mdl.tp_options[0], 0) for mdl in inp.models)
    cands.add(current)
    configs = sorted(cands)
    gain = np.array([[config_value(values.at(t, gpus_of(c)), inp, c) for c in configs] for t in range(horizon)])
    mig = migration_matrix(inp, configs, configs, 0)
    score = gain[0] - migration_matrix(inp, [current], configs, 0)[0]
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
    return LiveputPlan(tuple(configs[i] for i in path), float(score[last]),
                       tuple(float(gain[t][i]) for t, i in enumerate(path)), survival_first(inp, configs[path[0]]),
                       len(configs))


def survival_first(inp: LiveputInput, config: Config) -> float:
    """P[no GPU `config` uses is reclaimed in the first interval], over the scenarios."""
    used = gpus_of(config)
    lost = inp.num_gpus - inp.available[:, 0].astype(int)
    return float(sum(w * survival_probability(inp.num_gpus, int(k), used) if used else w
                     for w, k in zip(inp.weights, lost)))


def gpus_of(config: Config) -> int:
    return sum(tp * n for tp, n in config)


def reactive_config(inp: LiveputInput, t: int = 0) -> Config:
    """SpotServe-style baseline: per model the fewest replicas (lowest-latency TP first) whose capacity meets the
    current mean rate on the GPUs available now, ignoring preemption risk."""
    gpus = int(np.min(inp.available[:, t]))
    out = []
    for m, model in enumerate(inp.models):
        rate = float(inp.weights @ inp.online_rps[:, m, t])
        o = int(np.argmax(model.tp_options))
        tp = model.tp_options[o]
        if model.online_rate_per_s[o] <= 0:  # the model cannot serve within SLO on this pool (or does not fit)
            out.append((tp, 0))
            continue
        n = int(np.ceil(rate / model.online_rate_per_s[o])) if rate > 0 else 0
        n = min(n, gpus // tp)
        gpus -= n * tp
        out.append((tp, n))
    return tuple(out)
