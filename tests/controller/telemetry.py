"""Telemetry batches for the controller tests: columns as the API takes them, seeded."""

from __future__ import annotations

from typing import Any

import numpy as np


def batch(n: int, *, start_s: float, span_s: float = 600.0, seed: int = 0, first_id: int = 0,
          models: tuple[str, ...] = ("chat", "small"), outcomes: bool = True) -> dict[str, Any]:
    """`n` completed requests arriving uniformly over [start_s, start_s + span_s)."""
    rng = np.random.default_rng(seed)
    body: dict[str, Any] = {
        "request_id": list(range(first_id, first_id + n)),
        "model": [models[i % len(models)] for i in range(n)],
        "slo_class": ["interactive" if i % 5 else "batch" for i in range(n)],
        "arrival_s": np.sort(start_s + rng.uniform(0, span_s, n)).tolist(),
        "prompt_tokens": rng.integers(50, 2000, n).tolist(),
        "output_tokens": rng.integers(10, 400, n).tolist(),
    }
    if outcomes:
        body |= {"outcome": ["completed"] * n, "ttft_s": rng.uniform(0.05, 2.0, n).tolist(),
                 "tpot_s": rng.uniform(0.01, 0.15, n).tolist()}
    return body
