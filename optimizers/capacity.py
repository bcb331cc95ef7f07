"""Capacity tables: the highest request rate one replica serves within its SLOs, as a function of its KV share.

A replica of (model, GPU type, TP) runs a continuous-batching engine whose iteration time is the LatencyModel's
linear form. For a stationary arrival rate λ (requests/s) of requests with mean prompt P and output O tokens:

- every request costs the engine `q = O·(c_decode + c_kv·ctx) + P·c_prefill + c_attn·(E[P²] + P)/2` seconds of iteration
  time beyond the fixed per-iteration cost c0 (ctx = P + O/2, the mean context a decode step reads), so the mean
  iteration time is `τ(λ) = c0 / (1 − λ·q)` (the iteration is c0 plus the work of the λ·τ requests per iteration);
- the decode batch is `B = λ·O·τ` (Little's law over the O decode steps a request stays for);
- TPOT ≈ τ; its target holds with a margin for batch-size fluctuations;
- KV: the batch keeps `B·ctx` tokens resident; the batch is Poisson around B, so `(B + z·√B)·ctx` must fit the KV
  share (with headroom for page rounding); a replica that time-shares its GPU holds its requests for up to the TPOT
  target per token, so its B is taken at that step time (`EngineLimits.time_shared`);
- TTFT = one iteration + the prompt's prefill work (slowed by the decode work sharing the iterations) + the waiting
  time of an M/G/1 queue of prefills (Pollaczek–Khinchine mean; its tail taken as exponential, so the target
  quantile of TTFT, not the mean, meets the target).

All constraints tighten as λ grows, so the capacity is the root of one monotone slack (Brent's method, scipy). The
table samples the capacity at KV shares between the least a replica may hold (one max-context sequence) and all the
memory the weights leave; between samples it is linear. The placement program uses the table's concave envelope
(`CapacityTable.segments`), whose perspective over n identical replicas stays linear: `load ≤ aₖ·n + bₖ·K`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy.optimize import brentq

from core.catalog import GIB
from core.latency import LatencyModel

_TINY_RATE = 1e-9


@dataclass(frozen=True)
class LoadShape:
    """The requests a replica serves: mean lengths and the spread of prompt lengths (for the M/G/1 tail)."""

    mean_prompt_tokens: float
    mean_output_tokens: float
    prompt_cv: float = 1.0  # coefficient of variation of the prefill work; 1 ≈ exponential-like lengths

    @property
    def mean_context_tokens(self) -> float:
        """Mean context a decode step reads (prompt plus half the output)."""
        return self.mean_prompt_tokens + self.mean_output_tokens / 2


@dataclass(frozen=True)
class SLOTarget:
    """Latency targets; `None` for offline work, whose capacity is its throughput limit."""

    ttft_s: float
    tpot_s: float
    quantile: float = 0.99  # the TTFT quantile that must meet the target


@dataclass(frozen=True)
class EngineLimits:
    """Serving-engine limits and safety margins the estimate respects."""

    max_batch_seqs: int = 256  # scheduler's cap on running sequences
    # λ·q ≤ this: queues stay stable. The simulated engine saturates at λ·q ≈ 0.88 (its iterations carry costs the
    # per-request work q leaves out), so 0.95 sat past the cliff: a TP-2 8B replica on H100s with Azure lengths,
    # rated 29.5 req/s, served 100 % of requests within SLO at 28 req/s, 94 % at 29 and 29 % at 30. 0.8 leaves
    # ~10 % for bursts (docs/plan_quality.md).
    max_utilization: float = 0.80
    tpot_margin: float = 0.90  # mean TPOT ≤ margin × target (batch sizes fluctuate around their mean)
    kv_headroom: float = 0.85  # resident KV ≤ headroom × share (page rounding, blocks held by prefills)
    # The decode batch is Poisson around its mean B (M/G/∞ occupancy), so the KV the batch holds exceeds its mean
    # often when B is small: the share must hold B + z·√B sequences (z = 2.33: 99 % of the time) — without it,
    # small replicas ran out of pages at their "capacity" and preempted thousands of requests (docs/plan_quality.md).
    batch_z: float = 2.33
    # A replica that may time-share its GPU decodes one step per round of every resident model's iterations, so its
    # requests stay resident up to the TPOT target per token, not its own iteration time: its KV is sized for a batch
    # of rate × output × the TPOT target (Little's law at the slowest step the SLO allows). Without this, four 8B
    # replicas whose shares fitted their own iteration times on one A100 ran out of pages and thrashed.
    time_shared: bool = False
    num_kv_points: int = 6  # samples of the table between the smallest and largest KV share


def work_per_request_s(lat: LatencyModel, load: LoadShape) -> float:
    """Iteration seconds one request adds beyond the per-iteration constant c0 (`q` in the module docstring)."""
    decode = load.mean_output_tokens * (lat.c_decode_s + lat.c_kv_s * load.mean_context_tokens)
    return decode + prefill_work_s(lat, load)


def prefill_work_s(lat: LatencyModel, load: LoadShape) -> float:
    """Mean iteration seconds of one prompt's prefill. Attention over the prompt is quadratic in its length, so its
    mean takes E[P²] = P̄²(1 + cv²), not P̄²: with the Azure prompts (cv ≈ 1) the mean-length shortcut halved the
    attention term (a small part of q for chat prompts, a large one for long ones)."""
    p = load.mean_prompt_tokens
    return p * lat.c_prefill_s + lat.c_attn_s * (p * p * (1 + load.prompt_cv**2) + p) / 2


def _slack(rate: float, lat: LatencyModel, load: LoadShape, kv_tokens: float, slo: SLOTarget | None,
           lim: EngineLimits) -> float:
    """min over constraints of (limit − value)/limit at `rate`; ≥ 0 where the rate is feasible."""
    q = work_per_request_s(lat, load)
    rho = rate * q
    if rho >= 1:
        return -rho  # past saturation: strictly negative, so the root lies below
    tau = lat.c0_s / (1 - rho)
    batch = rate * load.mean_output_tokens * tau
    step_s = max(tau, lim.tpot_margin * slo.tpot_s) if lim.time_shared and slo is not None else tau
    resident = rate * load.mean_output_tokens * step_s
    slacks = [
        1 - rho / lim.max_utilization,
        1 - batch / lim.max_batch_seqs,
        1 - (resident + lim.batch_z * math.sqrt(resident)) * load.mean_context_tokens / (lim.kv_headroom * kv_tokens),
    ]
    if slo is not None:
        slacks.append(1 - tau / (lim.tpot_margin * slo.tpot_s))
        slacks.append(1 - min(ttft_quantile_s(rate, lat, load, slo.quantile) / slo.ttft_s, 1e3))
    return min(slacks)


def ttft_quantile_s(rate: float, lat: LatencyModel, load: LoadShape, quantile: float) -> float:
    """The `quantile` of TTFT at `rate` req/s (module docstring): iteration + prefill + M/G/1 waiting tail."""
    o = load.mean_output_tokens
    q = work_per_request_s(lat, load)
    rho = rate * q
    if rho >= 1:
        return math.inf
    tau = lat.c0_s / (1 - rho)
    decode_share = rate * o * (lat.c_decode_s + lat.c_kv_s * load.mean_context_tokens)
    prefill_s = prefill_work_s(lat, load) / max(1 - decode_share, 1e-6)
    rho_pf = rate * prefill_s
    if rho_pf >= 1:
        return math.inf
    mean_wait = rho_pf * prefill_s * (1 + load.prompt_cv**2) / (2 * (1 - rho_pf))
    tail_wait = 0.0
    if rho_pf > 1 - quantile and mean_wait > 0:
        # P(W > x) ≈ ρ·exp(−x·ρ/E[W]): the conditional wait of M/G/1 taken as exponential.
        tail_wait = (mean_wait / rho_pf) * math.log(rho_pf / (1 - quantile))
    return tau + prefill_s + tail_wait


def max_rate_per_s(lat: LatencyModel, load: LoadShape, kv_tokens: float, slo: SLOTarget | None,
                   limits: EngineLimits = EngineLimits()) -> float:
    """Highest arrival rate (req/s) at which one replica holds every constraint; 0 if none does (also when the
    KV share cannot hold one whole request of mean length)."""
    if kv_tokens < load.mean_prompt_tokens + load.mean_output_tokens or _slack(_TINY_RATE, lat, load, kv_tokens, slo, limits) < 0:
        return 0.0
    upper = limits.max_utilization / work_per_request_s(lat, load)
    if _slack(upper, lat, load, kv_tokens, slo, limits) >= 0:
        return upper
    return float(brentq(_slack, _TINY_RATE, upper, args=(lat, load, kv_tokens, slo, limits), xtol=1e-6, rtol=1e-6))


@dataclass(frozen=True)
class CapacityTable:
    """SLO-feasible rate of one replica (req/s) against its KV share per GPU (GiB), sampled and linear between.

    `kv_gib` is increasing; `rate_per_s` is non-decreasing (more KV never hurts). Shares outside the table clamp.
    """

    kv_gib: tuple[float, ...]
    rate_per_s: tuple[float, ...]

    def rate_at(self, kv_gib: float) -> float:
        return float(np.interp(kv_gib, self.kv_gib, self.rate_per_s))

    @property
    def max_rate_per_s(self) -> float:
        return self.rate_per_s[-1]

    def kv_needed_gib(self, rate_per_s: float) -> float:
        """Smallest KV share whose capacity reaches `rate_per_s` (the largest share if none does)."""
        if rate_per_s >= self.rate_per_s[-1]:
            return self.kv_gib[-1]
        return float(np.interp(rate_per_s, self.rate_per_s, self.kv_gib))

    @cached_property
    def segments(self) -> list[tuple[float, float]]:
        """(intercept, slope) pairs whose minimum is the table's upper concave envelope over its range.

        Capacity is concave in the KV share (KV-bound, then compute-bound), so the envelope equals the table up to
        rounding; taking the envelope keeps the program's constraint set convex either way.
        """
        hull = _upper_hull(list(zip(self.kv_gib, self.rate_per_s)))
        segs = []
        for (x0, y0), (x1, y1) in itertools.pairwise(hull):
            slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
            segs.append((y0 - slope * x0, slope))
        return segs or [(self.rate_per_s[-1], 0.0)]


def _upper_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper concave hull of points sorted by x (monotone chain)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


@lru_cache(maxsize=4096)
def capacity_table(lat: LatencyModel, load: LoadShape, kv_bytes_per_token_per_gpu: int, kv_min_gib: float,
                   kv_max_gib: float, slo: SLOTarget | None, limits: EngineLimits = EngineLimits()) -> CapacityTable:
    """Sample `max_rate_per_s` at KV shares (per GPU) spaced geometrically from `kv_min_gib` to `kv_max_gib`.

    Cached: fleets of many identical models share one table per (latency model, load, SLO, KV range).
    """
    if kv_max_gib <= 0:
        return CapacityTable((0.0, 1.0), (0.0, 0.0))
    low = min(max(kv_min_gib, 1e-3), kv_max_gib)
    shares = np.unique(np.geomspace(low, kv_max_gib, limits.num_kv_points)) if low < kv_max_gib else np.array([low])
    rates = [max_rate_per_s(lat, load, s * GIB / kv_bytes_per_token_per_gpu, slo, limits) for s in shares]
    rates = np.maximum.accumulate(rates)
    if len(shares) == 1:
        return CapacityTable((0.0, float(shares[0])), (0.0, float(rates[0])))
    return CapacityTable(tuple(float(s) for s in shares), tuple(float(r) for r in rates))
