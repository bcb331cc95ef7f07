"""Shared inputs for the optimizer tests: small fleets and seeded scenario sets."""

from __future__ import annotations

import numpy as np
import pytest

from core.forecast import ScenarioSet
from tests.factories import make_fleet


def scenario_set(fleet, demand_rps, *, available=None, interval_s: float = 300.0, prompt: float = 1024.0,
                 output: float = 256.0, share=None) -> ScenarioSet:
    """Scenarios from a (S, M) or (S, M, T) demand array; class shares default to all in the first class."""
    demand = np.asarray(demand_rps, float)
    if demand.ndim == 2:
        demand = demand[:, :, None]
    s, m, t = demand.shape
    pools = tuple(p.name for p in fleet.pools)
    avail = np.array([[p.count] for p in fleet.pools], float)[None].repeat(s, 0).repeat(t, 2) if available is None \
        else np.asarray(available, float)
    classes = tuple(c.name for c in fleet.slo_classes)
    if share is None:
        share = np.zeros((m, len(classes)))
        share[:, 0] = 1.0
    return ScenarioSet(start_s=0.0, interval_s=interval_s, models=tuple(fleet.model_names[:m]), pools=pools,
                       slo_classes=classes, weights=np.full(s, 1 / s), seeds=np.arange(s, dtype=np.int64),
                       demand_rps=demand, available_gpus=avail, class_share=np.asarray(share, float),
                       mean_prompt_tokens=np.full(m, prompt), mean_output_tokens=np.full(m, output))


@pytest.fixture
def two_gpu_fleet():
    return make_fleet()
