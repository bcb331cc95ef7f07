"""Synthetic workloads: per-model Gamma renewal arrivals at given rates and burstiness, with lengths from a model.

Each model is an independent stationary renewal process over [0, duration_s) whose gaps are Gamma with mean
1/rate and the given CV (CV 1 is a Poisson process; CV > 1 is bursty, as production LLM traffic is: ServeGen
reports per-client CVs mostly between 1 and 4 — Xiang et al., arXiv 2505.09999).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from core.errors import InputError
from core.requests import RequestTable
from workloads.arrivals import Family, Segments, moment_match, renewal_arrivals
from workloads.lengths import LengthModel, as_length_model


def synthesize_rates(
    rates_per_s: Mapping[str, float],
    *,
    duration_s: float,
    lengths: RequestTable | LengthModel,
    seed: int,
    cv: float | Mapping[str, float] = 1.0,
    slo_class: str = "default",
) -> RequestTable:
    """Requests of every model in `rates_per_s` (the model dictionary, in that order) over [0, duration_s).

    `cv` is one inter-arrival CV for all models or one per model (missing models get 1). Lengths come from
    `lengths` (a table is resampled jointly). Everything lands in `slo_class`.
    """
    names = list(rates_per_s)
    rate = np.asarray([rates_per_s[n] for n in names], dtype=np.float64)
    cvs = np.asarray([cv.get(n, 1.0) if isinstance(cv, Mapping) else cv for n in names], dtype=np.float64)
    if not names or (rate < 0).any() or not np.isfinite(rate).all():
        raise InputError("rates_per_s", dict(rates_per_s), "one rate ≥ 0 per model")
    if (cvs <= 0).any():
        raise InputError("cv", cv, "an inter-arrival CV > 0")
    if not duration_s > 0:
        raise InputError("duration_s", duration_s, "a duration > 0")
    live = np.flatnonzero(rate > 0)
    return gamma_requests(live, np.zeros(live.shape[0]), np.full(live.shape[0], float(duration_s)), rate[live],
                          cvs[live], model_names=names, lengths=lengths, seed=seed, slo_class=slo_class)


def gamma_requests(stream: np.ndarray, start_s: np.ndarray, span_s: np.ndarray, rate_per_s: np.ndarray,
                   cv: np.ndarray, *, model_names: Sequence[str], lengths: RequestTable | LengthModel, seed: int,
                   slo_class: str = "default") -> RequestTable:
    """Requests of Gamma renewal segments (one per row: model `stream`, from `start_s` for `span_s` at `rate_per_s`
    > 0 with gap CV `cv`), lengths from `lengths`, all in `slo_class`; arrival_s from 0."""
    family = np.full(stream.shape[0], Family.GAMMA, np.int8)
    shape, scale = moment_match(family, rate_per_s, cv)
    segs = Segments(stream=stream, start_s=start_s, span_s=span_s, rate_per_s=rate_per_s, family=family, shape=shape,
                    scale=scale)
    rng = np.random.default_rng(seed)
    arrival_s, streams = renewal_arrivals(segs, rng, origin_s=0.0)
    prompt, output = as_length_model(lengths).sample(rng, arrival_s.shape[0])
    return RequestTable.from_columns(
        arrival_s=arrival_s, model_idx=streams, slo_idx=np.zeros(arrival_s.shape[0], np.int16),
        prompt_tokens=prompt, output_tokens=output, model_names=tuple(model_names), slo_names=(slo_class,),
        sort=False,
    )
