"""Queue planner (QLM-style, without its limits): order request groups on replicas by the *distribution* of their
waiting time, within a time budget.

A group waits for the output tokens queued ahead of it on its replica, decoded at the replica's token rate, plus a
model swap when the replica must change model. The tokens ahead are a sum of per-group totals: normal by the
central limit theorem once 30 or more requests are ahead (QLM), else a gamma with the same mean and variance (right
skew: a few long outputs dominate small sums, where the normal underestimates). The objective is the expected
number of requests that miss their TTFT deadline, weighted by class priority.

Search (anytime): EDF on the least-loaded replica of the group's model → local search (move a group to another
replica, swap neighbours, regroup same-model groups on a replica that swaps models, split a large group so its head
goes first) → the exact best order, by dynamic programming over subsets, on each replica with few groups
(`best_order`), and of every stretch of a few consecutive groups on larger ones (`best_window`). Evictions: when
the head group of a replica is predicted late and lower-priority requests are decoding there, evict them by KV
swap-out or recompute, whichever the latency model says is cheaper.
Running requests whose output has passed their predicted p99 are re-estimated (mean residual life of a lognormal).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import special, stats

LengthModel = Callable[[str, str, int, int], tuple[float, float]]
"""(model, slo_class, num_requests, prompt_tokens) → (mean, variance) of the group's total output tokens."""


@dataclass(frozen=True)
class QueueSettings:
    clt_min_requests: int = 30  # normal approximation from this many requests ahead (QLM); gamma below
    split_min_requests: int = 8  # groups this large may be split
    exact_max_groups: int = 10  # the exact order (`best_order`) on replicas with at most this many groups
    window_groups: int = 8  # larger replicas: the exact order of every stretch of this many (`best_window`)
    priority_weight_base: float = 4.0  # class of priority p weighs base^(−p)
    violation_to_evict: float = 0.5  # evict when the head group misses with at least this probability
    p99_z: float = 2.326
    # Deterministic search (simulations, benchmarks): at most `max_passes` improvement passes instead of the
    # wall-clock deadline, so the orders depend on the inputs and not on the machine's load.
    deterministic: bool = False
    max_passes: int = 20


@dataclass(frozen=True)
class GroupJob:
    """A request group as the search sees it."""

    group_id: str
    model: str
    num_requests: int
    mean_tokens: float  # total output tokens of the group (mean)
    var_tokens: float
    slack_s: float  # time left until its earliest TTFT deadline (inf: offline)
    weight: float  # priority weight per request
    replica_id: str | None = None  # where it waits now


@dataclass(frozen=True)
class Server:
    """A replica: its model, decode token rate at its SLO operating point, work already running, swap time."""

    replica_id: str
    model: str
    tokens_per_s: float
    busy_tokens: float = 0.0  # expected remaining output tokens of the requests it is decoding
    swap_s: float = 0.0  # to load another model (from host memory)


@dataclass
class Assignment:
    """Ordered groups per server (server index → job indices) and its cost."""

    orders: list[list[int]]
    cost: float
    evaluations: int = 0
    steps: dict[str, int] = field(default_factory=dict)
    exact: dict[int, frozenset[int]] = field(default_factory=dict)  # server → the groups last put in best order
    windowed: dict[int, tuple[int, ...]] = field(default_factory=dict)  # server → its last order no window improves


def violation_probabilities(jobs: Sequence[GroupJob], server: Server, order: Sequence[int],
                            settings: QueueSettings) -> np.ndarray:
    """P[group misses its deadline] for each group of `order` on `server` (same order)."""
    if not order:
        return np.zeros(0)
    return _stretch_misses([jobs[i] for i in order], server, settings, _Ahead(model=server.model))


def _stretch_misses(groups: Sequence[GroupJob], server: Server, settings: QueueSettings, ahead: _Ahead,
                    extra_swaps: np.ndarray | int = 0) -> np.ndarray:
    """P[miss] of each of `groups`, served in that order after `ahead`, with `extra_swaps` more model swaps already
    made: (len(groups),), or (k, len(groups)) for a (k, 1) column of them."""
    mean = np.array([j.mean_tokens for j in groups])
    var = np.array([j.var_tokens for j in groups])
    count = np.array([j.num_requests for j in groups])
    slack = np.array([j.slack_s for j in groups])
    own = np.cumsum([j.model != (ahead.model if k == 0 else groups[k - 1].model) for k, j in enumerate(groups)])
    ahead_mean = server.busy_tokens + ahead.mean + np.concatenate([[0.0], np.cumsum(mean)[:-1]])
    ahead_var = ahead.var + np.concatenate([[0.0], np.cumsum(var)[:-1]])
    ahead_n = ahead.n + np.concatenate([[0], np.cumsum(count)[:-1]])
    waits = (ahead.swaps + extra_swaps + own) * server.swap_s
    return miss_probability(ahead_mean, ahead_var, ahead_n, slack, waits, server.tokens_per_s, settings)


def miss_probability(ahead_mean: np.ndarray, ahead_var: np.ndarray, ahead_n: np.ndarray, slack_s: np.ndarray,
                     swap_wait_s: np.ndarray | float, tokens_per_s: float, settings: QueueSettings) -> np.ndarray:
    """P[the tokens ahead of a group outlast its slack less the swaps it waits for], elementwise (broadcast): a
    normal from `clt_min_requests` requests ahead, else a gamma with the same mean and variance; 0 for offline."""
    ahead_mean, ahead_var, ahead_n, slack_s, swap_wait_s = np.broadcast_arrays(
        np.asarray(ahead_mean, dtype=np.float64), np.asarray(ahead_var, dtype=np.float64) + 1e-9,
        ahead_n, np.asarray(slack_s, dtype=np.float64), np.asarray(swap_wait_s, dtype=np.float64))
    budget_tokens = (slack_s - swap_wait_s) * tokens_per_s
    p = np.where(np.isinf(slack_s), 0.0, 1.0)
    finite = np.isfinite(slack_s)
    normal = finite & (ahead_n >= settings.clt_min_requests)
    # P[tokens ahead > budget]: the survival functions through scipy.special (scipy.stats adds ~100 µs a call).
    p[normal] = special.ndtr((ahead_mean[normal] - budget_tokens[normal]) / np.sqrt(ahead_var[normal]))
    small = finite & ~normal
    if small.any():
        mean, var, budget = ahead_mean[small], ahead_var[small], budget_tokens[small]
        shape = np.maximum(mean**2 / var, 1e-6)
        scale = var / np.maximum(mean, 1e-9)
        p[small] = np.where(mean <= 0, (budget < 0).astype(float),
                            special.gammaincc(shape, np.maximum(budget, 0) / scale))
    return p


def server_cost(jobs: Sequence[GroupJob], server: Server, order: Sequence[int], settings: QueueSettings) -> float:
    p = violation_probabilities(jobs, server, order, settings)
    return float(sum(pi * jobs[i].weight * jobs[i].num_requests for pi, i in zip(p, order)))


def edf_start(jobs: Sequence[GroupJob], servers: Sequence[Server]) -> list[list[int]]:
    """Each group to the least-loaded server of its model (its current one on ties), then EDF per server."""
    orders: list[list[int]] = [[] for _ in servers]
    load = [s.busy_tokens / max(s.tokens_per_s, 1e-9) for s in servers]
    for i in sorted(range(len(jobs)), key=lambda i: (jobs[i].slack_s, jobs[i].group_id)):
        job = jobs[i]
        same = [k for k, s in enumerate(servers) if s.model == job.model] or list(range(len(servers)))
        k = min(same, key=lambda k: (load[k] - (1e-9 if servers[k].replica_id == job.replica_id else 0), k))
        orders[k].append(i)
        load[k] += job.mean_tokens / max(servers[k].tokens_per_s, 1e-9)
    return orders


def order_groups(jobs: list[GroupJob], servers: Sequence[Server], *, budget_s: float,
                 settings: QueueSettings = QueueSettings(), seed: int = 0) -> tuple[list[GroupJob], Assignment]:
    """Anytime search (module docstring); returns the (possibly split) jobs and the best assignment found.

    Every step is checked against the deadline, so the search returns within about one cost evaluation of
    `budget_s` (or one exact ordering, ≤ ~15 ms)."""
    deadline = math.inf if settings.deterministic else time.perf_counter() + budget_s
    jobs = list(jobs)
    orders = edf_start(jobs, servers)
    costs = [server_cost(jobs, s, o, settings) for s, o in zip(servers, orders)]
    best = Assignment(orders, sum(costs), len(servers), {"edf": 1})
    rng = np.random.default_rng(seed)
    passes = 0
    while time.perf_counter() < deadline and sum(costs) > 1e-9:
        if settings.deterministic and passes >= settings.max_passes:
            break
        passes += 1
        improved = _improve_once(jobs, servers, best, costs, settings, rng, deadline)
        if not improved and not _split_once(jobs, servers, best, costs, settings, deadline):
            break
    best.cost = sum(costs)
    return jobs, best


def _improve_once(jobs, servers, best: Assignment, costs: list[float], settings: QueueSettings, rng,
                  deadline: float) -> bool:
    """One pass over the servers with expected misses: the exact order of each small replica, neighbour swaps on
    larger ones (exact windows instead above `exact_max_groups`), regrouping by model, and moves of the
    latest-missing group to another server of its model. The windows cost more, so they run after the loop: every
    server has had its cheaper moves before the deadline can fall."""
    improved = False
    large = []
    for k in map(int, rng.permutation(len(servers))):
        if time.perf_counter() >= deadline:
            return improved
        if costs[k] <= 1e-9:
            continue
        n = len(best.orders[k])
        if 2 < n <= settings.exact_max_groups:
            improved |= _exact(jobs, servers, best, costs, settings, k)
        elif n > settings.exact_max_groups and settings.window_groups > 1:
            large.append(k)
        else:
            improved |= _swap_neighbours(jobs, servers, best, costs, settings, k)
        improved |= _regroup(jobs, servers, best, costs, settings, k)
        improved |= _move_from(jobs, servers, best, costs, settings, k)
    for k in large:
        if len(best.orders[k]) > settings.exact_max_groups:
            improved |= _windows(jobs, servers, best, costs, settings, k, deadline)
    return improved


def _try(jobs, servers, best: Assignment, costs: list[float], settings: QueueSettings, k: int,
         cand: list[int], step: str, fewer_switches: bool = False) -> bool:
    """Adopt `cand` as server k's order if it lowers the expected misses there — or, with `fewer_switches`, keeps
    them equal while changing model fewer times (a plateau move that cannot cycle: every adopted move lowers
    (misses, switches) lexicographically). True when adopted."""
    c = server_cost(jobs, servers[k], cand, settings)
    best.evaluations += 1
    better = c < costs[k] - 1e-9
    if not better and not (fewer_switches and c <= costs[k] + 1e-9
                           and _switches(jobs, servers[k], cand) < _switches(jobs, servers[k], best.orders[k])):
        return False
    best.orders[k], costs[k] = cand, c
    best.steps[step] = best.steps.get(step, 0) + 1
    return True


def _switches(jobs, server: Server, order: list[int]) -> int:
    models = [server.model] + [jobs[i].model for i in order]
    return sum(a != b for a, b in itertools.pairwise(models))


def _swap_neighbours(jobs, servers, best: Assignment, costs: list[float], settings: QueueSettings, k: int) -> bool:
    improved = False
    for pos in range(len(best.orders[k]) - 1):
        order = best.orders[k]
        cand = order[:pos] + [order[pos + 1], order[pos]] + order[pos + 2:]
        improved |= _try(jobs, servers, best, costs, settings, k, cand, "swap")
    return improved


def _regroup(jobs, servers, best: Assignment, costs: list[float], settings: QueueSettings, k: int) -> bool:
    """On a replica that changes model between groups, move a group up to just behind the nearest earlier group of
    its model (or to the front, if the replica's own model): EDF interleaves models by deadline and pays a model
    swap at every change, which packing same-model groups together avoids. A regrouping that keeps the expected
    misses equal is taken too (it opens swaps that then pay off)."""
    if servers[k].swap_s <= 0 or len({jobs[i].model for i in best.orders[k]}) < 2:
        return False
    improved = False
    for pos in range(1, len(best.orders[k])):
        order = best.orders[k]
        i = order[pos]
        if jobs[order[pos - 1]].model == jobs[i].model:
            continue
        same = [q for q in range(pos) if jobs[order[q]].model == jobs[i].model]
        if not same and servers[k].model != jobs[i].model:
            continue
        at = same[-1] + 1 if same else 0
        cand = order[:at] + [i] + order[at:pos] + order[pos + 1:]
        improved |= _try(jobs, servers, best, costs, settings, k, cand, "regroup", fewer_switches=True)
    return improved


def _move_from(jobs, servers, best: Assignment, costs: list[float], settings: QueueSettings, k: int) -> bool:
    """Move the latest-missing group of server k to the server of its model where the total cost drops most."""
    order = best.orders[k]
    if not order:
        return False
    p = violation_probabilities(jobs, servers[k], order, settings)
    pos = int(np.argmax(p * [jobs[i].weight * jobs[i].num_requests for i in order]))
    if p[pos] <= 1e-6:
        return False
    i = order[pos]
    rest = order[:pos] + order[pos + 1:]
    rest_cost = server_cost(jobs, servers[k], rest, settings)
    best_gain, best_move = 1e-9, None
    for j, s in enumerate(servers):
        if j == k or s.model != jobs[i].model:
            continue
        target = best.orders[j]
        at = sum(1 for x in target if jobs[x].slack_s <= jobs[i].slack_s)  # its EDF position there
        cand = target[:at] + [i] + target[at:]
        c = server_cost(jobs, s, cand, settings)
        best.evaluations += 1
        gain = costs[k] + costs[j] - rest_cost - c
        if gain > best_gain:
            best_gain, best_move = gain, (j, cand, c)
    if best_move is None:
        return False
    j, cand, c = best_move
    best.orders[k], costs[k] = rest, rest_cost
    best.orders[j], costs[j] = cand, c
    best.steps["move"] = best.steps.get("move", 0) + 1
    return True


def _split_once(jobs: list[GroupJob], servers, best: Assignment, costs: list[float], settings: QueueSettings,
                deadline: float) -> bool:
    """Split the group with the largest expected misses in two; its first half keeps its place, the second goes last."""
    cands = []
    for k, order in enumerate(best.orders):
        if costs[k] <= 1e-9:
            continue
        p = violation_probabilities(jobs, servers[k], order, settings)
        cands += [(p[n] * jobs[i].num_requests * jobs[i].weight, k, n) for n, i in enumerate(order)
                  if jobs[i].num_requests >= settings.split_min_requests and p[n] > 0.05]
    if not cands:
        return False
    for _, k, n in sorted(cands, reverse=True):
        if time.perf_counter() >= deadline:
            break
        i = best.orders[k][n]
        job = jobs[i]
        half = job.num_requests // 2
        frac = half / job.num_requests
        jobs[i] = replace(job, num_requests=half, mean_tokens=job.mean_tokens * frac, var_tokens=job.var_tokens * frac)
        jobs.append(replace(job, group_id=f"{job.group_id}#2", num_requests=job.num_requests - half,
                            mean_tokens=job.mean_tokens * (1 - frac), var_tokens=job.var_tokens * (1 - frac)))
        cand = best.orders[k] + [len(jobs) - 1]
        c = server_cost(jobs, servers[k], cand, settings)
        if c < costs[k] - 1e-9:  # keep the split only when it lowers the expected misses
            best.orders[k], costs[k] = cand, c
            best.steps["split"] = best.steps.get("split", 0) + 1
            return True
        jobs.pop()
        jobs[i] = job
    return False


def _exact(jobs, servers, best: Assignment, costs: list[float], settings: QueueSettings, k: int) -> bool:
    """Server k's groups in their best order (`best_order`); True when that lowers its expected misses. An order
    found exact stays so until a group joins, leaves or is split, so it is not solved again."""
    order = best.orders[k]
    if frozenset(order) == best.exact.get(k):
        return False
    cand = [order[x] for x in best_order([jobs[i] for i in order], servers[k], settings)]
    best.evaluations += 1
    best.exact[k] = frozenset(order)
    c = server_cost(jobs, servers[k], cand, settings)
    if c >= costs[k] - 1e-9:
        return False
    best.orders[k], costs[k] = cand, c
    best.steps["exact"] = best.steps.get("exact", 0) + 1
    return True


def _windows(jobs, servers, best: Assignment, costs: list[float], settings: QueueSettings, k: int,
             deadline: float) -> bool:
    """Server k's order with every stretch of `window_groups` consecutive groups in its best order (`best_window`),
    the stretches overlapping by half, front to back. An order that no stretch improves is not swept again."""
    if tuple(best.orders[k]) == best.windowed.get(k):
        return False
    width = settings.window_groups
    step = max(width // 2, 1)
    improved = False
    for start in range(0, max(len(best.orders[k]) - width, 0) + step, step):
        if time.perf_counter() >= deadline:
            return improved
        cand = best_window(jobs, servers[k], best.orders[k], start, width, settings)
        if cand != best.orders[k]:
            improved |= _try(jobs, servers, best, costs, settings, k, cand, "window")
    if not improved:
        best.windowed[k] = tuple(best.orders[k])
    return improved


def best_order(jobs: Sequence[GroupJob], server: Server, settings: QueueSettings = QueueSettings()) -> list[int]:
    """The order of `jobs` on `server` with the fewest expected weighted misses (`server_cost`), exactly.

    Dynamic programming over the subsets of groups served first: a group's miss probability depends only on the
    set ahead of it (the sums of their tokens' means and variances and of their requests) and on how many model
    swaps it waits for, which depends on the order ahead only through the model served last and the swaps so far.
    So the state is (set, last model, swaps), 2ⁿ · models · (n + 1) of them, evaluated a layer of equal-sized sets
    at a time; ~1 ms at 6 groups, ~15 ms at 10 on one core. Returns positions into `jobs`."""
    return _dp_order(jobs, server, settings, _Ahead(model=server.model), [])


def best_window(jobs: Sequence[GroupJob], server: Server, order: Sequence[int], start: int, width: int,
                settings: QueueSettings = QueueSettings()) -> list[int]:
    """`order` with its positions `[start, start + width)` in their best order, the groups before and after them
    kept in place; exact for that window. The groups ahead of the window enter as a fixed start (their sums, the
    model served last, the swaps so far); the groups after it depend on the window only through its sums, which
    every order of it shares, and through the model it ends on and the swaps it makes, so their misses are priced
    per (last model, swaps) at the DP's end. Indices in and out are into `jobs`."""
    window = list(order[start:start + width])
    ahead = _Ahead.of(jobs, server, order[:start])
    inner = _dp_order([jobs[i] for i in window], server, settings, ahead,
                      [jobs[i] for i in order[start + width:]])
    return list(order[:start]) + [window[x] for x in inner] + list(order[start + width:])


@dataclass(frozen=True)
class _Ahead:
    """What the groups served before a stretch of the order leave it: their tokens and requests (beyond the
    server's running work), the model served last and the swaps made."""

    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    model: str = ""
    swaps: int = 0

    @classmethod
    def of(cls, jobs: Sequence[GroupJob], server: Server, served: Sequence[int]) -> _Ahead:
        return cls(float(sum(jobs[i].mean_tokens for i in served)), float(sum(jobs[i].var_tokens for i in served)),
                   int(sum(jobs[i].num_requests for i in served)), jobs[served[-1]].model if served else server.model,
                   _switches(jobs, server, list(served)))


def _dp_order(jobs: Sequence[GroupJob], server: Server, settings: QueueSettings, ahead: _Ahead,
              after: Sequence[GroupJob]) -> list[int]:
    """The DP of `best_order` for the groups `jobs` served after `ahead` and before the groups `after` (whose
    misses count too). Returns positions into `jobs`."""
    n = len(jobs)
    if n <= 1:
        return list(range(n))
    names = list(dict.fromkeys([ahead.model, *(j.model for j in jobs)]))
    top = n if server.swap_s > 0 and len(names) > 1 else 0  # the most swaps a group of the window can wait for
    if not top:
        names = names[:1]  # swaps cost nothing, or the window ends on one model whatever its order
    model = np.array([names.index(j.model) if top else 0 for j in jobs])
    weight = np.array([j.weight * j.num_requests for j in jobs], dtype=np.float64)
    masks = np.arange(1 << n)
    bits = (masks[:, None] >> np.arange(n)) & 1
    ahead_mean = server.busy_tokens + ahead.mean + bits @ np.array([j.mean_tokens for j in jobs], dtype=np.float64)
    ahead_var = ahead.var + bits @ np.array([j.var_tokens for j in jobs], dtype=np.float64)
    ahead_n = ahead.n + bits @ np.array([j.num_requests for j in jobs])
    # miss[mask, j, s]: group j served right after the set `mask`, having waited for s swaps (its own included).
    swaps = np.arange(top + 1)
    miss = weight[None, :, None] * miss_probability(
        ahead_mean[:, None, None], ahead_var[:, None, None], ahead_n[:, None, None],
        np.array([j.slack_s for j in jobs])[None, :, None], (ahead.swaps + swaps)[None, None, :] * server.swap_s,
        server.tokens_per_s, settings)
    value = np.full((1 << n, len(names), top + 1), np.inf)
    value[0, 0, 0] = 0.0
    size = bits.sum(axis=1)
    for layer in range(n):
        here = masks[size == layer]
        for j in range(n):
            sets = here[(here >> j) & 1 == 0]
            if sets.size == 0:
                continue
            m = model[j]
            cand = value[sets, m, :] + miss[sets, j, :]  # the last group's model again: no swap
            if top:
                others = np.delete(value[sets], m, axis=1).min(axis=1)  # another model: one more swap
                cand[:, 1:] = np.minimum(cand[:, 1:], others[:, :-1] + miss[sets, j, 1:])
            target = sets | (1 << j)
            value[target, m, :] = np.minimum(value[target, m, :], cand)
    mask = (1 << n) - 1
    end = value[mask] + (_after_misses(jobs, server, settings, ahead, after, names, top) if top and after else 0.0)
    last, s = np.unravel_index(int(np.argmin(end)), end.shape)
    # Walk back from the best final state to the group served last, and so on.
    order: list[int] = []
    while mask:
        v = value[mask, last, s]
        for j in range(n):
            if not (mask >> j) & 1 or model[j] != last:
                continue
            prev = mask ^ (1 << j)
            if np.isclose(value[prev, last, s] + miss[prev, j, s], v, rtol=1e-9, atol=1e-12):
                s_prev, last_prev = s, last
            elif s > 0 and np.isclose(
                    np.delete(value[prev, :, s - 1], last).min() + miss[prev, j, s], v, rtol=1e-9, atol=1e-12):
                s_prev = s - 1
                last_prev = min((x for x in range(len(names)) if x != last), key=lambda x: value[prev, x, s - 1])
            else:
                continue
            order.append(j)
            mask, last, s = prev, last_prev, s_prev
            break
        else:
            raise AssertionError("best_order: no predecessor reproduces the optimum")
    return order[::-1]


def _after_misses(jobs: Sequence[GroupJob], server: Server, settings: QueueSettings, ahead: _Ahead,
                  after: Sequence[GroupJob], names: list[str], top: int) -> np.ndarray:
    """(models, top + 1): the weighted misses of the groups `after` a window that ends on model `names[m]`
    having made `s` swaps (the window's sums are the same in every order)."""
    weight = np.array([j.weight * j.num_requests for j in after])
    out = np.empty((len(names), top + 1))
    for m, name in enumerate(names):
        start = _Ahead(ahead.mean + sum(j.mean_tokens for j in jobs), ahead.var + sum(j.var_tokens for j in jobs),
                       ahead.n + sum(j.num_requests for j in jobs), name, ahead.swaps)
        out[m] = (_stretch_misses(after, server, settings, start, np.arange(top + 1)[:, None]) * weight).sum(axis=1)
    return out


def residual_tokens(mean: float, var: float, generated: int, p99_z: float) -> tuple[float, bool]:
    """Expected remaining output of a request that has produced `generated` tokens; True if it passed its p99.

    Lengths are taken as lognormal with the given mean and variance; past the p99 the mean residual life
    E[L − g | L > g] replaces the (now wrong) unconditional remainder.
    """
    sigma2 = math.log(1 + var / max(mean, 1e-9) ** 2)
    mu = math.log(max(mean, 1e-9)) - sigma2 / 2
    sigma = math.sqrt(sigma2)
    if sigma < 1e-9:  # a point mass (one sample, or identical ones): nothing to condition on
        return max(mean - generated, 1.0), generated > mean
    p99 = math.exp(mu + p99_z * sigma)
    if generated <= p99:
        return max(mean - generated, 1.0), False
    z = (math.log(generated) - mu) / sigma
    tail = stats.norm.sf(z)
    conditional = math.exp(mu + sigma2 / 2) * stats.norm.sf(z - sigma) / max(tail, 1e-300)
    return max(conditional - generated, 1.0), True
