"""Request length models: where synthetic requests get their (prompt, output) token counts.

`EmpiricalLengths` resamples (prompt, output) *pairs* jointly from a trace, so the correlation between the two is
kept. `LognormalLengths` draws each independently from a clipped lognormal. `AZURE_CONV_LENGTHS` is a lognormal
fitted to the Azure LLM inference conversation trace (2023; Patel et al., "Splitwise", ISCA'24): median prompt
1,020 tokens (σ of log 0.99), median output 129 tokens (σ 0.86); the two are almost uncorrelated there
(correlation of logs 0.09), which is why drawing them independently is a fair default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.requests import RequestTable


class LengthModel(Protocol):
    """Draws `n` (prompt_tokens, output_tokens) pairs, both int32 ≥ 1."""

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True, eq=False)
class EmpiricalLengths:
    """Resamples (prompt, output) pairs, with replacement, from observed requests."""

    prompt_tokens: np.ndarray  # int32 (N,)
    output_tokens: np.ndarray  # int32 (N,)

    @classmethod
    def from_table(cls, table: RequestTable) -> EmpiricalLengths:
        if not len(table):
            raise ValueError("a length trace needs at least one request")
        return cls(table.prompt_tokens, table.output_tokens)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.prompt_tokens.shape[0], n)
        return self.prompt_tokens[idx], self.output_tokens[idx]


@dataclass(frozen=True)
class LognormalLengths:
    """Independent lognormal prompt and output lengths, rounded and clipped to [1, max]."""

    prompt_median_tokens: float
    prompt_sigma: float  # standard deviation of log(prompt tokens)
    output_median_tokens: float
    output_sigma: float
    max_prompt_tokens: int = 16384
    max_output_tokens: int = 2048

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = _lognormal(rng, n, self.prompt_median_tokens, self.prompt_sigma, self.max_prompt_tokens)
        output = _lognormal(rng, n, self.output_median_tokens, self.output_sigma, self.max_output_tokens)
        return prompt, output


def _lognormal(rng: np.random.Generator, n: int, median: float, sigma: float, max_tokens: int) -> np.ndarray:
    draws = rng.lognormal(np.log(median), sigma, n)
    return np.clip(np.rint(draws), 1, max_tokens).astype(np.int32)


AZURE_CONV_LENGTHS = LognormalLengths(
    prompt_median_tokens=1020, prompt_sigma=0.99, output_median_tokens=129, output_sigma=0.86,
    max_prompt_tokens=16384, max_output_tokens=2048,
)


def as_length_model(lengths: RequestTable | LengthModel) -> LengthModel:
    """A table becomes an `EmpiricalLengths`; a length model is returned as is."""
    return EmpiricalLengths.from_table(lengths) if isinstance(lengths, RequestTable) else lengths
