"""Synthetic series with known structure, seeded, for the forecaster tests."""

from __future__ import annotations

import numpy as np


def seasonal(n: int = 600, period: int = 24, *, level: float = 100.0, amplitude: float = 40.0, noise: float = 3.0,
             seed: int = 0) -> np.ndarray:
    """Level + sine season + Gaussian noise (clipped at 0): seasonal methods must win on it."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.maximum(level + amplitude * np.sin(2 * np.pi * t / period) + rng.normal(0, noise, n), 0.0)


def constant(n: int = 300, value: float = 50.0) -> np.ndarray:
    return np.full(n, value)


def intermittent(n: int = 600, *, prob: float = 0.08, size: float = 20.0, seed: int = 0) -> np.ndarray:
    """Mostly zeros; now and then a demand around `size`: Croston/TSB territory."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < prob, rng.poisson(size, n), 0).astype(float)


def random_walk(n: int = 600, *, start: float = 500.0, step: float = 10.0, seed: int = 0) -> np.ndarray:
    """A level that wanders: persistence is the optimal forecast."""
    rng = np.random.default_rng(seed)
    return np.maximum(start + np.cumsum(rng.normal(0, step, n)), 0.0)


def mean_reverting(n: int = 800, *, level: float = 200.0, phi: float = -0.6, noise: float = 15.0,
                   seed: int = 0) -> np.ndarray:
    """Random walk whose steps alternate (AR(1) differences with negative φ): AR on differences must win."""
    rng = np.random.default_rng(seed)
    d = np.zeros(n)
    e = rng.normal(0, noise, n)
    for t in range(1, n):
        d[t] = phi * d[t - 1] + e[t]
    return np.maximum(level + np.cumsum(d), 0.0)
