"""Seeded random instances for tests and `bench/solver_scaling.py`: fleets, scenario sets and request groups.

They follow the shapes of the real workloads the project plans for: Zipf model popularity (a few hot models, a long
tail), lognormal demand noise across scenarios, a mix of interactive, standard and offline classes.
"""

from __future__ import annotations

import numpy as np

from core.fleet import FleetSpec
from core.forecast import ScenarioSet

ARCHS = ("Llama-3.1-8B", "Llama-3.2-3B", "Qwen2.5-14B", "Mistral-7B")


def random_fleet(num_gpus: int, num_models: int, *, seed: int = 0, spot_share: float = 0.0) -> FleetSpec:
    """Half H100 and half A100-80GB nodes of 8 (one pool of H100s below 16 GPUs); `spot_share` of them spot L4s."""
    rng = np.random.default_rng(seed)
    spot = round(num_gpus * spot_share)
    rest = num_gpus - spot
    pools = []
    if rest >= 16:
        pools += [{"name": "h100", "gpu": "H100-SXM", "count": rest // 2, "gpus_per_node": 8},
                  {"name": "a100", "gpu": "A100-80GB", "count": rest - rest // 2, "gpus_per_node": 8}]
    elif rest:
        pools.append({"name": "h100", "gpu": "H100-SXM", "count": rest, "gpus_per_node": min(8, rest)})
    if spot:
        pools.append({"name": "l4-spot", "gpu": "L4", "count": spot, "gpus_per_node": 1, "spot": True})
    archs = rng.choice(ARCHS, size=num_models, p=[0.5, 0.3, 0.1, 0.1])
    models = [{"name": f"m{i:03d}", "arch": str(a), "tp_options": [1, 2], "max_context_tokens": 8192}
              for i, a in enumerate(archs)]
    return FleetSpec.model_validate({
        "apiVersion": "fleetwise/v1", "kind": "Fleet", "metadata": {"name": f"random-{num_gpus}x{num_models}"},
        "spec": {"pools": pools, "models": models, "slo_classes": [
            {"name": "interactive", "ttft_s": 1.0, "tpot_s": 0.1, "priority": 0},
            {"name": "standard", "ttft_s": 5.0, "tpot_s": 0.2, "priority": 1},
            {"name": "batch", "online": False, "priority": 9}]}})


def random_scenarios(fleet: FleetSpec, num_scenarios: int, *, num_intervals: int = 4, load: float = 0.5,
                     seed: int = 0, interval_s: float = 300.0, zipf: float = 1.0) -> ScenarioSet:
    """Zipf popularity scaled so the mean total is `load` × ~10 req/s per GPU, lognormal noise per scenario."""
    rng = np.random.default_rng(seed)
    m = len(fleet.models)
    popularity = 1 / np.arange(1, m + 1) ** zipf
    popularity = rng.permutation(popularity / popularity.sum())
    total = load * 10.0 * fleet.num_gpus
    noise = rng.lognormal(-0.08, 0.4, size=(num_scenarios, m, num_intervals))
    demand = total * popularity[None, :, None] * noise
    avail = np.array([[p.count] for p in fleet.pools], dtype=float)[None].repeat(num_scenarios, 0)
    avail = np.repeat(avail, num_intervals, axis=2)
    for j, p in enumerate(fleet.pools):
        if p.spot:
            avail[:, j, :] = np.clip(np.round(p.count * rng.uniform(0.5, 1.0, (num_scenarios, num_intervals))), 0,
                                     p.count)
    classes = tuple(c.name for c in fleet.slo_classes)
    share = np.tile(np.array([0.6, 0.3, 0.1])[: len(classes)], (m, 1))
    share /= share.sum(axis=1, keepdims=True)
    return ScenarioSet(
        start_s=0.0, interval_s=interval_s, models=tuple(fleet.model_names), pools=tuple(p.name for p in fleet.pools),
        slo_classes=classes, weights=np.full(num_scenarios, 1 / num_scenarios),
        seeds=np.arange(num_scenarios, dtype=np.int64) + seed, demand_rps=demand, available_gpus=avail,
        class_share=share, mean_prompt_tokens=np.full(m, 1024.0), mean_output_tokens=np.full(m, 256.0))
