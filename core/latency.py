"""Latency models: how long one engine iteration, a weight load and a KV swap take for (model, GPU type, TP).

One iteration of a continuous-batching engine runs a batch that mixes prefill chunks and decode steps. Its time is
linear in five batch features (the form control planes and simulators converge on; see docs/latency.md):

    t = c0 + c_prefill·prefill_tokens + c_attn·Σ(prefill_tokens·context) + c_decode·decode_seqs + c_kv·kv_tokens_read

Besides iterations, `admit_s` is a fixed cost per request on the way to its first token when it reaches an idle
engine (handing it over, the engine thread's wake-up: an idle engine's thread sleeps; a busy one takes the request
between iterations at no extra cost), measured by `fleetwise profile` through the worker's submit path; it is 0
for presets (a GPU worker's is far below its iteration time) and for profiles written before it existed.

`roofline()` derives the coefficients from catalog hardware; `simulator.latency` loads fitted profiles (YAML
written by `fleetwise profile`) and checks presets against published measurements. Optimizers, the simulator and
the executors all read the same `LatencyModel` objects through a `LatencyBook`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from core.catalog import GPUType, ModelArch


@dataclass(frozen=True)
class FitError:
    """How well a fitted profile predicts held-out batches (relative errors)."""

    mape: float  # mean absolute percentage error on held-out batches, as a fraction
    p90_abs_rel_error: float  # 90th percentile of |predicted − measured| / measured
    num_heldout: int


@dataclass(frozen=True)
class LatencyModel:
    """Iteration, load and swap times of one (architecture, GPU type, TP degree). All times in seconds."""

    arch: str
    gpu_type: str
    tp: int
    c0_s: float  # fixed cost per iteration: weight reads, launches, TP sync
    c_prefill_s: float  # per prefill token (GEMMs)
    c_attn_s: float  # per (prefill token × context token it attends to)
    c_decode_s: float  # per decoding sequence (GEMM rows, sampling, bookkeeping)
    c_kv_s: float  # per KV-cache token read by decode attention
    disk_to_host_s: float  # weights from disk into (pinned) host memory, whole replica
    host_to_gpu_s: float  # weights from host memory onto the GPUs (ranks load in parallel)
    kv_swap_bytes_per_s: float  # device ↔ host KV copy bandwidth per GPU
    kv_bytes_per_token: int  # whole-model KV bytes per token (for swap times)
    source: str = "roofline"  # "roofline" or "profile:<name>"
    fit_error: FitError | None = None  # None for presets; fitted profiles always carry one
    activation_overhead_s: float = 0.0  # engine start-up on each activation (allocator, graphs), beyond the copy
    # Per request that reaches an idle engine, once: from its submission until its first token beyond the
    # iterations that computed it (request intake, the engine thread's wake-up). The simulator adds it to such a
    # request's TTFT and end-to-end latency (not to TPOT, nor to any iteration: it costs the request time, not the
    # device throughput).
    admit_s: float = 0.0

    def iteration_s(
        self,
        *,
        prefill_tokens: float = 0.0,
        prefill_attn: float = 0.0,
        decode_seqs: float = 0.0,
        kv_tokens: float = 0.0,
    ) -> float:
        """Time of one iteration with these batch features (`prefill_attn` = Σ prefill tokens × context)."""
        if not (prefill_tokens or decode_seqs):
            return 0.0
        return (
            self.c0_s
            + self.c_prefill_s * prefill_tokens
            + self.c_attn_s * prefill_attn
            + self.c_decode_s * decode_seqs
            + self.c_kv_s * kv_tokens
        )

    def prefill_s(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """One whole prompt prefilled alone in one iteration (attention over the causal triangle)."""
        new = prompt_tokens - cached_tokens
        attn = new * cached_tokens + new * (new + 1) / 2
        return self.iteration_s(prefill_tokens=new, prefill_attn=attn)

    def decode_step_s(self, batch: int, mean_context_tokens: float) -> float:
        """One decode step of `batch` sequences of the given mean context."""
        return self.iteration_s(decode_seqs=batch, kv_tokens=batch * mean_context_tokens)

    def kv_swap_s(self, tokens: int) -> float:
        """Copy the KV of `tokens` tokens between device and host (TP ranks copy their shards in parallel)."""
        return tokens * self.kv_bytes_per_token / self.tp / self.kv_swap_bytes_per_s

    @property
    def activate_from_host_s(self) -> float:
        return self.host_to_gpu_s + self.activation_overhead_s

    @property
    def activate_from_cold_s(self) -> float:
        return self.disk_to_host_s + self.host_to_gpu_s + self.activation_overhead_s


@dataclass(frozen=True)
class RooflineAssumptions:
    """Efficiencies that turn datasheet peaks into achieved rates (documented in docs/latency.md)."""

    hbm_efficiency: float = 0.80  # achieved / peak HBM bandwidth for weight and KV streaming
    gemm_mfu: float = 0.60  # achieved / peak tensor FLOP/s for prefill GEMMs
    attn_mfu: float = 0.45  # achieved / peak FLOP/s for prefill attention
    pcie_efficiency: float = 0.80  # pinned-memory copies over the host link
    disk_gbps: float = 2.0  # local NVMe read throughput (GB/s) for cold loads
    launch_overhead_s: float = 0.8e-3  # per-iteration scheduling + kernel launches (CUDA graphs on decode)
    per_seq_overhead_s: float = 15e-6  # per decoding sequence: sampling, detokenisation, bookkeeping
    allreduce_latency_s: float = 8e-6  # per all-reduce, two per layer under TP
    # Engine start-up per activation besides the weight copy: Prism measures 0.7 s to activate a ≤ 8B model from
    # host memory (arXiv 2505.04021), of which a 16 GB copy at 80 % of PCIe Gen5 is 0.31 s (docs/latency.md).
    activation_overhead_s: float = 0.4


def roofline(arch: ModelArch, gpu: GPUType, tp: int, assume: RooflineAssumptions | None = None) -> LatencyModel:
    """Coefficients from the hardware roofline: weights and KV stream from HBM, GEMMs and attention at an MFU."""
    a = assume or RooflineAssumptions()
    hbm = gpu.hbm_bytes_per_s * a.hbm_efficiency
    gemm = gpu.peak_flops * a.gemm_mfu * tp
    attn = gpu.peak_flops * a.attn_mfu * tp
    weight_read_s = arch.weight_bytes / tp / hbm
    comm_bytes_per_token = 0.0
    comm_latency_s = 0.0
    if tp > 1:
        # Ring all-reduce of the hidden state, twice per layer: 2·(tp−1)/tp of the bytes cross each link.
        comm_bytes_per_token = 2 * arch.num_layers * arch.hidden_size * arch.dtype_bytes * 2 * (tp - 1) / tp
        comm_latency_s = 2 * arch.num_layers * a.allreduce_latency_s
    comm_s_per_token = comm_bytes_per_token / gpu.interconnect_bytes_per_s
    token_gemm_s = arch.flops_per_token / gemm
    return LatencyModel(
        arch=arch.name,
        gpu_type=gpu.name,
        tp=tp,
        c0_s=weight_read_s + a.launch_overhead_s + comm_latency_s,
        c_prefill_s=token_gemm_s + comm_s_per_token,
        c_attn_s=arch.attn_flops_per_token_per_context / attn,
        c_decode_s=token_gemm_s + comm_s_per_token + a.per_seq_overhead_s,
        c_kv_s=arch.kv_bytes_per_token / tp / hbm,
        disk_to_host_s=arch.weight_bytes / (a.disk_gbps * 1e9),
        host_to_gpu_s=arch.weight_bytes / tp / (gpu.pcie_bytes_per_s * a.pcie_efficiency),
        kv_swap_bytes_per_s=gpu.pcie_bytes_per_s * a.pcie_efficiency,
        kv_bytes_per_token=arch.kv_bytes_per_token,
        source="roofline",
        activation_overhead_s=a.activation_overhead_s,
    )


@dataclass
class LatencyBook:
    """Latency models by (architecture, GPU type, TP): fitted profiles where present, roofline otherwise.

    Read-mostly: profiles are given at construction; roofline models are derived on first use and cached.
    """

    profiles: Mapping[tuple[str, str, int], LatencyModel] = field(default_factory=dict)
    assumptions: RooflineAssumptions = field(default_factory=RooflineAssumptions)
    _cache: dict[tuple[str, str, int], LatencyModel] = field(default_factory=dict, repr=False)

    def get(self, arch: ModelArch, gpu: GPUType, tp: int) -> LatencyModel:
        key = (arch.name, gpu.name, tp)
        model = self.profiles.get(key) or self._cache.get(key)
        if model is None:
            model = self._cache[key] = roofline(arch, gpu, tp, self.assumptions)
        return model


PROFILE_KIND = "LatencyProfiles"


def save_profiles(path: str | Path, models: Iterable[LatencyModel], *, meta: Mapping[str, object] | None = None) -> None:
    """Write latency models as YAML (`kind: LatencyProfiles`), the format `fleetwise profile` produces."""
    doc = {
        "apiVersion": "fleetwise/v1",
        "kind": PROFILE_KIND,
        "meta": dict(meta or {}),
        "profiles": [asdict(m) for m in models],
    }
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))


def load_profiles(path: str | Path) -> dict[tuple[str, str, int], LatencyModel]:
    """Read a profile YAML into `{(arch, gpu_type, tp): LatencyModel}`; raises InputError on a bad file."""
    from core.errors import InputError

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError("file", str(path), f"a readable YAML file of kind {PROFILE_KIND} ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != PROFILE_KIND:
        raise InputError("kind", (doc or {}).get("kind") if isinstance(doc, dict) else doc, f"must be {PROFILE_KIND}",
                         source=str(path))
    raws = doc.get("profiles") or []
    if not isinstance(raws, list):
        raise InputError("profiles", raws, "a list of profiles (as `fleetwise profile` writes)", source=str(path))
    out: dict[tuple[str, str, int], LatencyModel] = {}
    for i, raw in enumerate(raws):
        try:
            err = raw.pop("fit_error", None)
            model = LatencyModel(**raw, fit_error=FitError(**err) if err else None)
        except (TypeError, AttributeError) as exc:
            raise InputError(f"profiles[{i}]", raw, f"the fields of LatencyModel ({exc})", source=str(path)) from None
        if not 0.0 <= model.admit_s < float("inf"):
            raise InputError(f"profiles[{i}].admit_s", model.admit_s, "a finite number of seconds ≥ 0",
                             source=str(path))
        out[(model.arch, model.gpu_type, model.tp)] = model
    return out
