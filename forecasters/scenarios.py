"""Weighted joint scenarios of per-model demand and per-pool availability over a horizon (`core.forecast.ScenarioSet`).

Sampling is stratified, not plain Monte Carlo: with S scenarios, each model's (and pool's) quantile level is
drawn once per stratum `[(k)/S, (k+1)/S)` — a Latin hypercube, independently permuted per model and pool — so
even a small S covers every model's whole distribution, tails included. A scenario keeps its level across the
horizon (a model that runs hot keeps running hot: forecast errors persist, they do not average out within an
hour). Values come from each forecast's quantile function, interpolated between the forecast's levels.

`reduce_scenarios` shrinks S to fewer weighted scenarios that keep the mean exactly and the tails: the scenarios
with the highest and lowest total demand and the lowest total availability stay as they are (with their weight);
the rest are clustered (k-means) and each cluster becomes its centroid with the cluster's weight, so the weighted
mean of every (model, interval) entry is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2

from core.forecast import Forecast, ScenarioSet

SAMPLING_LEVELS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def quantile_path(forecast: Forecast, u: np.ndarray) -> np.ndarray:
    """(len(u), T) values of the forecast at quantile levels `u`, linear between its levels (clamped outside)."""
    levels = np.array(sorted(forecast.quantiles))
    values = np.stack([forecast.quantile(q) for q in levels])  # (L, T), monotone in L
    return np.stack([np.interp(u, levels, values[:, t]) for t in range(values.shape[1])], axis=1)


def stratified_levels(rng: np.random.Generator, num_scenarios: int, num_series: int) -> np.ndarray:
    """(S, K) Latin-hypercube levels: each column has one level in every stratum [k/S, (k+1)/S), shuffled."""
    jitter = rng.random((num_scenarios, num_series))
    order = np.argsort(rng.random((num_scenarios, num_series)), axis=0)
    return (order + jitter) / num_scenarios


@dataclass(frozen=True)
class ScenarioInputs:
    """Forecasts per model and per pool, plus the per-model constants the scenario set carries."""

    models: tuple[str, ...]
    demand: tuple[Forecast, ...]  # one per model, counts per interval
    pools: tuple[str, ...]
    availability: tuple[Forecast | float, ...]  # one per pool: a GPU forecast, or a constant count
    slo_classes: tuple[str, ...]
    class_share: np.ndarray  # (M, C)
    mean_prompt_tokens: np.ndarray  # (M,)
    mean_output_tokens: np.ndarray  # (M,)


def sample_scenarios(inputs: ScenarioInputs, *, num_scenarios: int, seed: int, start_s: float,
                     interval_s: float, horizon: int) -> ScenarioSet:
    """S equally weighted, stratified joint scenarios (see the module docstring)."""
    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root)
    m, p = len(inputs.models), len(inputs.pools)
    u = stratified_levels(rng, num_scenarios, m + p)
    demand = np.zeros((num_scenarios, m, horizon))
    for i, f in enumerate(inputs.demand):
        demand[:, i, :] = quantile_path(f, u[:, i])[:, :horizon] / f.interval_s
    avail = np.zeros((num_scenarios, p, horizon))
    for j, a in enumerate(inputs.availability):
        avail[:, j, :] = a if isinstance(a, float) else np.round(quantile_path(a, u[:, m + j])[:, :horizon])
    seeds = np.array([s.generate_state(1, np.uint32)[0] for s in root.spawn(num_scenarios)], dtype=np.int64)
    return ScenarioSet(
        start_s=start_s, interval_s=interval_s, models=inputs.models, pools=inputs.pools,
        slo_classes=inputs.slo_classes, weights=np.full(num_scenarios, 1.0 / num_scenarios), seeds=seeds,
        demand_rps=demand, available_gpus=avail, class_share=inputs.class_share,
        mean_prompt_tokens=inputs.mean_prompt_tokens, mean_output_tokens=inputs.mean_output_tokens,
    )


def tail_scenarios(scenarios: ScenarioSet) -> list[int]:
    """Indices kept verbatim by reduction: highest and lowest total demand, lowest total availability."""
    demand = scenarios.demand_rps.sum(axis=(1, 2))
    keep = [int(np.argmax(demand)), int(np.argmin(demand))]
    if scenarios.available_gpus.size:
        keep.append(int(np.argmin(scenarios.available_gpus.sum(axis=(1, 2)))))
    return list(dict.fromkeys(keep))


def reduce_scenarios(scenarios: ScenarioSet, target: int, *, seed: int = 0) -> ScenarioSet:
    """At most `target` weighted scenarios with the same weighted mean and the same extreme scenarios."""
    s = scenarios.num_scenarios
    if target >= s:
        return scenarios
    tails = tail_scenarios(scenarios)[: max(target - 1, 0)]
    rest = np.setdiff1d(np.arange(s), tails)
    groups = [np.array([t]) for t in tails] + _clusters(scenarios, rest, target - len(tails), seed)
    w = scenarios.weights
    weights = np.array([w[g].sum() for g in groups])
    demand = np.stack([np.tensordot(w[g], scenarios.demand_rps[g], axes=1) / w[g].sum() for g in groups])
    avail = np.stack([np.tensordot(w[g], scenarios.available_gpus[g], axes=1) / w[g].sum() for g in groups])
    seeds = np.array([scenarios.seeds[_medoid(scenarios, g)] for g in groups])
    return ScenarioSet(
        start_s=scenarios.start_s, interval_s=scenarios.interval_s, models=scenarios.models, pools=scenarios.pools,
        slo_classes=scenarios.slo_classes, weights=weights / weights.sum(), seeds=seeds, demand_rps=demand,
        available_gpus=avail, class_share=scenarios.class_share, mean_prompt_tokens=scenarios.mean_prompt_tokens,
        mean_output_tokens=scenarios.mean_output_tokens,
    )


def _features(scenarios: ScenarioSet, rows: np.ndarray) -> np.ndarray:
    """Scenario vectors, each entry standardised so that large models do not drown small ones."""
    x = np.concatenate([scenarios.demand_rps[rows].reshape(len(rows), -1),
                        scenarios.available_gpus[rows].reshape(len(rows), -1)], axis=1)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _clusters(scenarios: ScenarioSet, rows: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    if k <= 0 or rows.size == 0:
        return []
    if rows.size <= k:
        return [np.array([r]) for r in rows]
    _, labels = kmeans2(_features(scenarios, rows), k, minit="++", seed=np.random.default_rng(seed))
    return [rows[labels == c] for c in range(k) if np.any(labels == c)]


def _medoid(scenarios: ScenarioSet, group: np.ndarray) -> int:
    """The member nearest the group's mean (its seed names the reduced scenario)."""
    if group.size == 1:
        return int(group[0])
    x = scenarios.demand_rps[group].reshape(group.size, -1)
    return int(group[np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1))])


def class_shares(counts: Mapping[str, np.ndarray], models: Sequence[str], num_classes: int,
                 default: np.ndarray) -> np.ndarray:
    """(M, C) shares from per-model class counts; models without requests take `default`."""
    out = np.tile(default, (len(models), 1))
    for i, name in enumerate(models):
        c = counts.get(name)
        if c is not None and c.sum() > 0:
            out[i] = c / c.sum()
    return out
