"""Transforms of request tables: spread traffic over models, assign SLO classes, scale the rate, cut time slices.

All are pure functions of (table, parameters, seed) and return new tables; all work on whole columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.errors import InputError
from core.fleet import FleetSpec
from core.requests import RequestTable, max_requests

# -- models -----------------------------------------------------------------------------------------------------


def zipf_shares(num_models: int, exponent: float) -> np.ndarray:
    """Popularity of ranks 1..n under Zipf's law: share_i ∝ i^-exponent (exponent 0: uniform). Sums to 1."""
    if num_models < 1:
        raise InputError("num_models", num_models, "at least 1 model")
    weights = np.arange(1, num_models + 1, dtype=np.float64) ** -float(exponent)
    return weights / weights.sum()


def split_models(
    table: RequestTable, models: int | Sequence[str], *, zipf_exponent: float, seed: int
) -> RequestTable:
    """Reassign every request to one of `models` (a count, named `model-{i}`, or names) drawn i.i.d. by Zipf
    popularity: the first name is the most popular. Each model then sees a thinned copy of the source process."""
    names = [f"model-{i}" for i in range(models)] if isinstance(models, int) else list(models)
    return split_by_shares(table, dict(zip(names, zipf_shares(len(names), zipf_exponent), strict=True)), seed=seed)


def split_by_shares(table: RequestTable, shares: Mapping[str, float], *, seed: int) -> RequestTable:
    """Reassign every request to a model drawn i.i.d. with probability ∝ `shares` (models with share 0 stay in
    the dictionary with no traffic)."""
    names = list(shares)
    p = np.asarray([shares[n] for n in names], dtype=np.float64)
    if not names or (p < 0).any() or p.sum() <= 0:
        raise InputError("shares", dict(shares), "non-negative model shares with a positive sum")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(names), size=len(table), p=p / p.sum()).astype(np.int32)
    return table.with_labels(model_idx=idx, model_names=names)


def fleet_model_shares(fleet: FleetSpec) -> dict[str, float]:
    """Each fleet model's share of requests, from `spec.workload`, in fleet order (sums to 1).

    Models listed in `mix` take their `share` as a fraction; what is left (1 − Σ shares) goes to the unlisted
    models by Zipf popularity (`zipf_exponent`, ranked in fleet order). When the listed shares add up to 1 or
    more, or every model is listed, the listed shares are normalised and unlisted models get nothing.
    """
    names = fleet.model_names
    listed = {m.model: m.share for m in fleet.spec.workload.mix}
    rest = [n for n in names if n not in listed]
    left = 1.0 - sum(listed.values())
    shares = dict.fromkeys(names, 0.0)
    if rest and left > 1e-12:
        shares.update(listed)
        for name, share in zip(rest, zipf_shares(len(rest), fleet.spec.workload.zipf_exponent) * left, strict=True):
            shares[name] = float(share)
    else:
        total = sum(listed.values())
        if total <= 0:
            raise InputError("spec.workload.mix", listed, "at least one model with a positive share")
        shares.update({k: v / total for k, v in listed.items()})
    return shares


def map_by_rank(table: RequestTable, targets: Sequence[str]) -> RequestTable:
    """Keep each source model's stream whole and give it a target name: sources ranked by request count take
    the targets in order (busiest → first); with more sources than targets the ranks wrap around (rank i →
    target i mod N), so no traffic is lost. `targets` becomes the model dictionary."""
    if not targets:
        raise InputError("targets", [], "at least one target model")
    counts = np.bincount(table.model_idx, minlength=len(table.model_names))
    ranked = np.argsort(-counts, kind="stable")
    target_of = np.empty(len(table.model_names), np.int32)
    target_of[ranked] = np.arange(len(ranked)) % len(targets)
    return table.with_labels(model_idx=target_of[table.model_idx], model_names=list(targets))


def rename_models(table: RequestTable, mapping: Mapping[str, str]) -> RequestTable:
    """Rename models (several sources may map to one target, merging their streams); unmapped names stay."""
    unknown = [m for m in mapping if m not in table.model_names]
    if unknown:
        raise InputError("rename", unknown[0], f"a model of the trace: {', '.join(table.model_names[:12])}")
    new = [mapping.get(m, m) for m in table.model_names]
    names = list(dict.fromkeys(new))
    lookup = np.asarray([names.index(n) for n in new], np.int32)
    return table.with_labels(model_idx=lookup[table.model_idx], model_names=names)


# -- SLO classes ------------------------------------------------------------------------------------------------


def assign_slo_classes(table: RequestTable, fleet: FleetSpec, *, seed: int) -> RequestTable:
    """Draw each request's SLO class from the fleet's mix for its model: `spec.workload.mix[].slo_classes` when
    given, else `default_slo_mix`, else everything in the first class. Class names become the fleet's."""
    workload = fleet.spec.workload
    classes = [c.name for c in fleet.slo_classes]
    default = workload.default_slo_mix or {classes[0]: 1.0}
    per_model = {m.model: m.slo_classes for m in workload.mix if m.slo_classes}
    mixes = [per_model.get(name, default) for name in table.model_names]
    return assign_slo_mixes(table, mixes, classes, seed=seed)


def assign_slo_mix(table: RequestTable, mix: Mapping[str, float], *, seed: int) -> RequestTable:
    """Draw every request's SLO class from one mix (fractions, normalised); the mix's keys become the classes."""
    return assign_slo_mixes(table, [mix] * len(table.model_names), list(mix), seed=seed)


def assign_slo_mixes(
    table: RequestTable, mixes: Sequence[Mapping[str, float]], classes: Sequence[str], *, seed: int
) -> RequestTable:
    """Per model i, draw classes from `mixes[i]` (fractions over `classes`, normalised). Models that share a mix
    are drawn together, so a fleet with one default mix costs one pass over the table."""
    rng = np.random.default_rng(seed)
    slo_idx = np.zeros(len(table), np.int16)
    groups: dict[tuple[float, ...], list[int]] = {}
    for i, mix in enumerate(mixes):
        groups.setdefault(_mix_vector(mix, classes), []).append(i)
    for probs, model_ids in groups.items():
        rows = slice(None) if len(groups) == 1 else np.isin(table.model_idx, model_ids)
        count = len(table) if len(groups) == 1 else int(np.count_nonzero(rows))
        slo_idx[rows] = rng.choice(len(classes), size=count, p=np.asarray(probs))
    return table.with_labels(slo_idx=slo_idx, slo_names=list(classes))


def _mix_vector(mix: Mapping[str, float], classes: Sequence[str]) -> tuple[float, ...]:
    unknown = [c for c in mix if c not in classes]
    if unknown:
        raise InputError("slo mix", unknown[0], f"an SLO class: {', '.join(classes)}")
    weights = np.asarray([float(mix.get(c, 0.0)) for c in classes])
    if (weights < 0).any() or weights.sum() <= 0:
        raise InputError("slo mix", dict(mix), "non-negative class fractions with a positive sum")
    return tuple(weights / weights.sum())


# -- time -------------------------------------------------------------------------------------------------------


def time_slice(table: RequestTable, start_s: float, end_s: float, *, rebase: bool = True) -> RequestTable:
    """Requests with start_s ≤ arrival < end_s; with `rebase`, arrival times are shifted so start_s becomes 0."""
    if not end_s > start_s:
        raise InputError("end_s", end_s, f"end_s must be greater than start_s ({start_s:g})")
    part = table.between(start_s, end_s)
    return part.with_arrivals(part.arrival_s - start_s) if rebase else part


def scale_rate(table: RequestTable, factor: float, *, seed: int, max_shift_s: float = 300.0) -> RequestTable:
    """Multiply the arrival rate by `factor` over the same time span.

    Each request yields ⌊factor⌋ replicas, plus one more with probability factor − ⌊factor⌋ (so factor < 1 is
    Bernoulli thinning, which keeps the burst structure). The first replica keeps the request's time; every
    further replica is moved by an independent uniform shift in ±`max_shift_s`, wrapped around inside the trace's
    span. Shifts of minutes keep the rate profile at the scale of hours and days (diurnal shape, load changes)
    while making the copies independent at the scale of seconds — more users behave like more independent
    streams, not like each burst arriving twice at the same instant. Replicas keep model, class and lengths.
    """
    if not 0 < factor < math.inf:
        raise InputError("rate_scale", factor, "a finite rate factor > 0")
    if len(table) * factor > (limit := max_requests()):
        raise InputError("rate_scale", factor, f"a factor that keeps the workload within {limit:,} requests on "
                         f"this machine (it has {len(table):,})")
    if factor == 1 or not len(table):
        return table
    rng = np.random.default_rng(seed)
    whole = int(np.floor(factor))
    copies = np.full(len(table), whole, np.int64) + (rng.random(len(table)) < factor - whole)
    index = np.repeat(np.arange(len(table)), copies)
    first = np.ones(index.shape[0], bool)
    first[1:] = index[1:] != index[:-1]
    start, span = table.start_s, max(table.duration_s, 1e-9)
    shift = np.where(first, 0.0, rng.uniform(-max_shift_s, max_shift_s, index.shape[0]))
    arrival = start + np.mod(table.arrival_s[index] - start + shift, span)
    arrival[first] = table.arrival_s[index[first]]
    texts = [table.prompt_text[i] for i in index] if table.prompt_text is not None else None
    return RequestTable.from_columns(  # fresh request ids: replicas are new requests
        arrival_s=arrival, model_idx=table.model_idx[index], slo_idx=table.slo_idx[index],
        prompt_tokens=table.prompt_tokens[index], output_tokens=table.output_tokens[index],
        model_names=table.model_names, slo_names=table.slo_names, prompt_text=texts,
    )
