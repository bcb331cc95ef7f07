"""Request lengths: per-request token distributions, per (model, SLO class) empirical tables, and the distribution
of the sum of a group's remaining output tokens — what the queue planner needs to turn a group into a waiting time.

- `LengthBatch`: N per-request distributions over a shared sorted support of token counts (`atoms`), as an
  (N, A) probability matrix. The unconditional empirical distribution is a batch with identical rows; the
  conditional model (`forecasters.length_model`) gives each request its own row.
- `EmpiricalLengths.fit(table)`: per (model, SLO class) empirical prompt and output distributions, falling back
  to the model's, then to everything's, where a pair has too few requests.
- `group_sum(batch, generated_so_far)`: the sum of remaining output tokens `Σ (L_i - g_i)` given `L_i > g_i`.
  Small groups get the exact distribution (convolution of the per-request pmfs on a token grid); large ones the
  normal approximation of the central limit theorem (QLM's estimate, which over-estimates for few groups and
  under-estimates heavy tails — hence the exact path for small groups). Both return a `SumDistribution` with
  `mean`, `var`, `quantile(q)` and `cdf(x)`.
- `group_remaining_output(lengths, model, slo_class, generated_so_far, prompt_tokens=, conditional=)`: the same
  from a (model, SLO class) and what each request has generated so far.
- `GroupLengths(empirical, conditional)`: the queue planner's `LengthModel` callable, (model, class, requests,
  prompt tokens) → (mean, variance) of the group's output tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.signal import fftconvolve
from scipy.stats import norm

from core.requests import RequestTable

ANY = "*"


@dataclass(frozen=True, eq=False)
class LengthBatch:
    """N token-count distributions on a shared support: `probs[i, a]` = P(L_i = atoms[a]). Rows sum to 1."""

    atoms: np.ndarray  # (A,) float64 sorted, ≥ 1
    probs: np.ndarray  # (N, A) float64

    @classmethod
    def empirical(cls, values: np.ndarray, n: int = 1) -> LengthBatch:
        """`n` copies of the empirical distribution of `values`."""
        atoms, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
        return cls(atoms, np.broadcast_to(counts / counts.sum(), (n, atoms.size)))

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def take(self, index: np.ndarray | slice) -> LengthBatch:
        return LengthBatch(self.atoms, self.probs[index])

    def mean(self) -> np.ndarray:
        return self.probs @ self.atoms

    def var(self) -> np.ndarray:
        return np.maximum(self.probs @ self.atoms**2 - self.mean() ** 2, 0.0)

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        """P(L_i ≤ x_i)."""
        x = np.broadcast_to(np.asarray(x, dtype=np.float64), (len(self),))
        return np.sum(self.probs * (self.atoms[None, :] <= x[:, None]), axis=1)

    def quantile(self, q: float) -> np.ndarray:
        """Smallest atom whose CDF reaches q, per request."""
        cdf = np.cumsum(self.probs, axis=1)
        return self.atoms[np.minimum(np.argmax(cdf >= q - 1e-12, axis=1), self.atoms.size - 1)]

    def remaining(self, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distribution of `L_i` given `L_i > g_i` on the shared atoms: (probs (N, A), survival P(L_i > g_i) (N,)).

        A row with no mass above `g_i` (the request outlived every length seen) is all zeros with survival 0;
        `remaining_moments` and `group_sum` then count it as one token to go.
        """
        g = np.broadcast_to(np.asarray(generated, dtype=np.float64), (len(self),))
        alive = self.atoms[None, :] > g[:, None]
        masked = self.probs * alive
        survival = masked.sum(axis=1)
        probs = np.divide(masked, survival[:, None], out=np.zeros_like(masked), where=survival[:, None] > 0)
        return probs, survival

    def remaining_moments(self, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of `L_i - g_i` given `L_i > g_i` (1 and 0 for a request past every known length)."""
        g = np.broadcast_to(np.asarray(generated, dtype=np.float64), (len(self),))
        probs, survival = self.remaining(g)
        left = self.atoms[None, :] - g[:, None]
        mean = np.sum(probs * left, axis=1)
        var = np.maximum(np.sum(probs * left**2, axis=1) - mean**2, 0.0)
        dead = survival <= 0
        return np.where(dead, 1.0, mean), np.where(dead, 0.0, var)


class SumDistribution(Protocol):
    """Distribution of a sum of tokens: what `group_sum` returns."""

    @property
    def mean(self) -> float: ...

    @property
    def var(self) -> float: ...

    def quantile(self, q: float) -> float: ...

    def cdf(self, x: float) -> float: ...


@dataclass(frozen=True)
class NormalSum:
    """Normal approximation N(mean, var) of a sum (central limit theorem), truncated below at 0 for quantiles."""

    mean: float
    var: float

    def quantile(self, q: float) -> float:
        return max(float(norm.ppf(q, loc=self.mean, scale=np.sqrt(self.var) + 1e-12)), 0.0)

    def cdf(self, x: float) -> float:
        return float(norm.cdf(x, loc=self.mean, scale=np.sqrt(self.var) + 1e-12))


@dataclass(frozen=True, eq=False)
class GridSum:
    """Exact distribution of a sum on a grid of `bin_tokens`-wide bins: `pmf[k]` = P(sum ∈ bin k)."""

    pmf: np.ndarray
    bin_tokens: float

    @property
    def _centres(self) -> np.ndarray:
        return (np.arange(self.pmf.size) + 0.5) * self.bin_tokens

    @property
    def mean(self) -> float:
        return float(self.pmf @ self._centres)

    @property
    def var(self) -> float:
        return float(max(self.pmf @ self._centres**2 - self.mean**2, 0.0))

    def quantile(self, q: float) -> float:
        k = int(np.searchsorted(np.cumsum(self.pmf), q - 1e-12))
        return float((min(k, self.pmf.size - 1) + 1) * self.bin_tokens)  # upper edge: conservative

    def cdf(self, x: float) -> float:
        return float(self.pmf[: int(np.floor(x / self.bin_tokens + 1e-9))].sum())


def group_sum(batch: LengthBatch, generated_so_far: np.ndarray | None = None, *, exact_max_requests: int = 32,
              max_bins: int = 4096) -> SumDistribution:
    """Distribution of `Σ_i (L_i - g_i)` for the requests of `batch`, given each has produced `g_i` tokens.

    Up to `exact_max_requests` requests: exact convolution of the per-request remaining pmfs on a grid whose bin
    width keeps the result within `max_bins` bins (moments then carry at most half a bin of error per request).
    More: the normal approximation. An empty group is a point mass at 0.
    """
    n = len(batch)
    g = np.zeros(n) if generated_so_far is None else np.asarray(generated_so_far, dtype=np.float64)
    if g.shape != (n,):
        raise ValueError(f"generated_so_far has shape {g.shape}, expected ({n},)")
    if n == 0:
        return NormalSum(0.0, 0.0)
    mean, var = batch.remaining_moments(g)
    if n > exact_max_requests:
        return NormalSum(float(mean.sum()), float(var.sum()))
    return _convolve(batch, g, max_bins)


def _convolve(batch: LengthBatch, g: np.ndarray, max_bins: int) -> GridSum:
    probs, survival = batch.remaining(g)
    left = batch.atoms[None, :] - g[:, None]
    span = float(np.sum(np.where(probs > 0, left, 0.0).max(axis=1, initial=1.0)))
    bin_tokens = max(1.0, np.ceil(span / max_bins))
    total = np.ones(1)
    for i in range(len(batch)):
        if survival[i] <= 0:
            row = np.zeros(2)
            row[int(np.floor(1.0 / bin_tokens))] = 1.0  # outlived every known length: one more token
        else:
            idx = np.floor(np.maximum(left[i], 0.0) / bin_tokens).astype(np.int64)
            row = np.bincount(idx[probs[i] > 0], weights=probs[i][probs[i] > 0])
        total = np.maximum(fftconvolve(total, row), 0.0)
    return GridSum(total / total.sum(), bin_tokens)


# -- empirical tables per (model, SLO class) ---------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EmpiricalLengths:
    """Empirical prompt and output token distributions per (model, SLO class), with fallbacks for rare pairs."""

    prompt: dict[tuple[str, str], np.ndarray]  # (model, class) → sorted samples; (model, ANY) and (ANY, ANY) too
    output: dict[tuple[str, str], np.ndarray]
    min_samples: int = 30

    @classmethod
    def fit(cls, table: RequestTable, *, min_samples: int = 30) -> EmpiricalLengths:
        """Group the table's requests; pairs with fewer than `min_samples` requests borrow their model's."""
        if len(table) == 0:
            raise ValueError("cannot learn lengths from an empty table")
        prompt: dict[tuple[str, str], np.ndarray] = {(ANY, ANY): np.sort(table.prompt_tokens)}
        output: dict[tuple[str, str], np.ndarray] = {(ANY, ANY): np.sort(table.output_tokens)}
        for m, model in enumerate(table.model_names):
            rows = table.model_idx == m
            if rows.sum() >= min_samples:
                prompt[(model, ANY)] = np.sort(table.prompt_tokens[rows])
                output[(model, ANY)] = np.sort(table.output_tokens[rows])
            for c, cls_name in enumerate(table.slo_names):
                pair = rows & (table.slo_idx == c)
                if pair.sum() >= min_samples:
                    prompt[(model, cls_name)] = np.sort(table.prompt_tokens[pair])
                    output[(model, cls_name)] = np.sort(table.output_tokens[pair])
        return cls(prompt, output, min_samples)

    def _lookup(self, store: dict[tuple[str, str], np.ndarray], model: str, slo_class: str) -> np.ndarray:
        for key in ((model, slo_class), (model, ANY), (ANY, ANY)):
            if key in store:
                return store[key]
        raise KeyError((model, slo_class))  # unreachable: (ANY, ANY) always exists

    def output_samples(self, model: str, slo_class: str) -> np.ndarray:
        return self._lookup(self.output, model, slo_class)

    def prompt_samples(self, model: str, slo_class: str) -> np.ndarray:
        return self._lookup(self.prompt, model, slo_class)

    def output_batch(self, model: str, slo_class: str, n: int = 1) -> LengthBatch:
        return LengthBatch.empirical(self.output_samples(model, slo_class), n)

    def mean_output(self, model: str, slo_class: str) -> float:
        return float(np.mean(self.output_samples(model, slo_class)))

    def mean_prompt(self, model: str, slo_class: str) -> float:
        return float(np.mean(self.prompt_samples(model, slo_class)))


class ConditionalLengths(Protocol):
    """What `GroupLengths` needs of a conditional model (`forecasters.length_model.OutputLengthModel`)."""

    def predict_for(self, model: str, slo_class: str, prompt_tokens: np.ndarray,
                    prompt_text: Sequence[str | None] | None = None) -> LengthBatch: ...


@dataclass(frozen=True, eq=False)
class GroupLengths:
    """`(model, slo_class, num_requests, prompt_tokens) -> (mean, variance)` of a group's total output tokens: the
    `LengthModel` callable the queue planner takes (`optimizers.queues`).

    With a conditional model, every request of the group is predicted at the group's mean prompt length;
    otherwise the (model, class) empirical distribution stands for each. Requests are independent, so the
    group's mean and variance are n times one request's (the planner applies the CLT or a gamma itself). The
    empirical moments are computed once per pair: the planner asks for every group of every plan, and a day of
    telemetry holds millions of samples.
    """

    empirical: EmpiricalLengths
    conditional: ConditionalLengths | None = None
    _moments: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, model: str, slo_class: str, num_requests: int, prompt_tokens: int) -> tuple[float, float]:
        if num_requests <= 0:
            return 0.0, 0.0
        if self.conditional is not None:
            one = self.conditional.predict_for(model, slo_class, np.array([prompt_tokens / num_requests]))
            mean, var = float(one.mean()[0]), float(one.var()[0])
        else:
            mean, var = self._empirical_moments(model, slo_class)
        return num_requests * mean, num_requests * var

    def _empirical_moments(self, model: str, slo_class: str) -> tuple[float, float]:
        key = (model, slo_class)
        if key not in self._moments:
            one = LengthBatch.empirical(self.empirical.output_samples(model, slo_class))
            self._moments[key] = (float(one.mean()[0]), float(one.var()[0]))
        return self._moments[key]


def group_remaining_output(lengths: EmpiricalLengths, model: str, slo_class: str, generated_so_far: np.ndarray, *,
                           prompt_tokens: np.ndarray | None = None, conditional: ConditionalLengths | None = None,
                           exact_max_requests: int = 32) -> SumDistribution:
    """Distribution of the output tokens a group of (model, SLO class) requests still has to produce.

    `generated_so_far[i]` is what request i has produced (0 for a waiting request). With a `conditional` model
    and the requests' `prompt_tokens`, each request gets its own length distribution; otherwise the pair's
    empirical one. See `group_sum` for exact (small groups) versus normal (large groups).
    """
    generated = np.asarray(generated_so_far, dtype=np.float64)
    if conditional is not None and prompt_tokens is not None:
        batch = conditional.predict_for(model, slo_class, np.asarray(prompt_tokens))
    else:
        batch = lengths.output_batch(model, slo_class, generated.size)
    return group_sum(batch, generated, exact_max_requests=exact_max_requests)
