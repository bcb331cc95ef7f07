"""What a baseline knows about load: per-model demand (expected or observed) and the capacity of one replica.

Static baselines (dedicated, MuxServe) size their placement once from *expected* rates, as their papers do: they are
given the workload's mean popularity. Reactive baselines (QLM, Prism) see only what the fleet observed over its
window (`FleetState.load`). Neither sees output lengths of waiting requests; both use per-model means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.fleet import FleetSpec, ServedModel
from core.forecast import ScenarioSet
from core.latency import LatencyModel
from core.state import FleetState

# Lengths assumed for a model nothing is known about yet (about a chat request: ShareGPT-like means).
DEFAULT_PROMPT_TOKENS = 512.0
DEFAULT_OUTPUT_TOKENS = 128.0
# vLLM's default `max_num_seqs`: the most sequences one engine batches.
MAX_BATCH_SEQS = 256


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """Load of one model: request rate and mean lengths."""

    model: str
    rate_per_s: float
    prompt_tokens: float
    output_tokens: float

    @property
    def tokens_per_s(self) -> float:
        """Tokens that enter the KV cache per second (prompt and output)."""
        return self.rate_per_s * (self.prompt_tokens + self.output_tokens)

    @property
    def output_tokens_per_s(self) -> float:
        return self.rate_per_s * self.output_tokens


def expected_demand(fleet: FleetSpec, state: FleetState, scenarios: ScenarioSet | None) -> dict[str, ModelDemand]:
    """Per-model demand from the scenarios' probability-weighted mean when given, else the observed load."""
    if scenarios is None:
        return observed_demand(fleet, state)
    mean_rps = scenarios.expected_demand_rps().mean(axis=1)
    out = observed_demand(fleet, state)
    for m in fleet.models:
        if m.name in scenarios.models:
            i = scenarios.model_index(m.name)
            out[m.name] = ModelDemand(
                m.name, float(mean_rps[i]), _or_default(scenarios.mean_prompt_tokens[i], DEFAULT_PROMPT_TOKENS),
                _or_default(scenarios.mean_output_tokens[i], DEFAULT_OUTPUT_TOKENS),
            )
    return out


def observed_demand(fleet: FleetSpec, state: FleetState) -> dict[str, ModelDemand]:
    """Per-model demand seen over the state's observation window (zero rate for models with no record)."""
    out = {}
    for m in fleet.models:
        load = state.load.get(m.name)
        if load is None:
            out[m.name] = ModelDemand(m.name, 0.0, DEFAULT_PROMPT_TOKENS, DEFAULT_OUTPUT_TOKENS)
        else:
            out[m.name] = ModelDemand(
                m.name, load.request_rate_per_s, _or_default(load.prompt_tokens_mean, DEFAULT_PROMPT_TOKENS),
                _or_default(load.output_tokens_mean, DEFAULT_OUTPUT_TOKENS),
            )
    return out


def _or_default(value: float, default: float) -> float:
    return float(value) if np.isfinite(value) and value > 0 else default


def tightest_tpot_s(fleet: FleetSpec) -> float | None:
    """The strictest TPOT target among online classes (None when every class is offline)."""
    targets = [c.tpot_s for c in fleet.slo_classes if c.online and c.tpot_s is not None]
    return min(targets) if targets else None


def decode_batch_limit(lat: LatencyModel, demand: ModelDemand, *, kv_tokens: int, tpot_s: float | None) -> int:
    """Largest decode batch that fits the KV room and keeps one decode step within `tpot_s` (at least 1)."""
    per_seq_tokens = demand.prompt_tokens + demand.output_tokens
    limit = min(MAX_BATCH_SEQS, int(kv_tokens // per_seq_tokens))
    if tpot_s is not None:
        mean_context = demand.prompt_tokens + demand.output_tokens / 2
        per_seq_s = lat.c_decode_s + lat.c_kv_s * mean_context
        limit = min(limit, int((tpot_s - lat.c0_s) // per_seq_s) if tpot_s > lat.c0_s else 1)
    return max(1, limit)


def seconds_per_request(lat: LatencyModel, demand: ModelDemand, batch: int) -> float:
    """GPU time one request costs on a replica running decode batches of `batch`: its prefill (batched with
    decode, so without the per-iteration constant) plus its share of `output_tokens` decode steps."""
    p = demand.prompt_tokens
    prefill_s = lat.c_prefill_s * p + lat.c_attn_s * p * (p + 1) / 2
    mean_context = p + demand.output_tokens / 2
    return prefill_s + demand.output_tokens * lat.decode_step_s(batch, mean_context) / batch


def replica_capacity_per_s(
    lat: LatencyModel, demand: ModelDemand, *, kv_tokens: int, tpot_s: float | None
) -> float:
    """Requests per second one replica serves at its SLO-feasible batch (MuxServe's `B / (T_prefill + S·T_decode)`
    estimate, with the batch capped by KV room and the TPOT target)."""
    batch = decode_batch_limit(lat, demand, kv_tokens=kv_tokens, tpot_s=tpot_s)
    return 1.0 / seconds_per_request(lat, demand, batch)


def kv_token_bytes_per_gpu(model: ServedModel, tp: int) -> int:
    return model.arch.kv_bytes_per_token_per_gpu(tp)
