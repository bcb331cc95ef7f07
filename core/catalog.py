"""Hardware and model catalogs: GPU types and LLM architectures, with the derived sizes planners need.

GPU figures are the vendors' datasheet numbers (dense bf16 tensor throughput, i.e. without 2:4 sparsity; HBM
bandwidth; host link bandwidth per direction). Memory is the marketed capacity in GiB (nvidia-smi shows a little
less; the fleet's memory policy keeps a reserve). Hourly prices are representative on-demand cloud prices per GPU
and exist so that plans can be compared on cost; fleets override them inline.

Model architectures are taken from the models' published `config.json` files (Hugging Face): layers, attention
heads, KV heads, head dimension, hidden and MLP sizes, vocabulary and context length.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

GIB = 1024**3

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class GPUType(BaseModel):
    """One GPU model: what a planner needs to know of the hardware."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(description="Catalog name, e.g. 'H100-SXM'.")
    memory_gib: PositiveFloat = Field(description="Device memory in GiB.")
    hbm_gbps: PositiveFloat = Field(description="Device memory bandwidth in GB/s (1e9 bytes/s).")
    peak_tflops: PositiveFloat = Field(description="Dense bf16 tensor-core throughput in TFLOP/s.")
    pcie_gbps: PositiveFloat = Field(description="Host link bandwidth per direction in GB/s.")
    price_per_hour: NonNegativeFloat = Field(description="Price of one GPU-hour in USD.")
    nvlink_gbps: NonNegativeFloat = Field(
        default=0.0, description="GPU-to-GPU bandwidth per direction in GB/s (0: no NVLink, PCIe only)."
    )

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_gbps * 1e9

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops * 1e12

    @property
    def pcie_bytes_per_s(self) -> float:
        return self.pcie_gbps * 1e9

    @property
    def interconnect_bytes_per_s(self) -> float:
        """Bandwidth for tensor-parallel all-reduce: NVLink where present, else PCIe."""
        return (self.nvlink_gbps or self.pcie_gbps) * 1e9


class ModelArch(BaseModel):
    """A decoder-only transformer (Llama family layout: RMSNorm, RoPE, GQA, SwiGLU)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(description="Catalog name, e.g. 'Llama-3.1-8B'.")
    params_b: PositiveFloat = Field(description="Parameter count in billions.")
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_heads: PositiveInt = Field(description="Query heads.")
    num_kv_heads: PositiveInt = Field(description="Key/value heads (GQA groups).")
    head_dim: PositiveInt
    intermediate_size: PositiveInt = Field(description="SwiGLU MLP width.")
    vocab_size: PositiveInt
    dtype_bytes: Annotated[int, Field(ge=1, le=4)] = Field(default=2, description="Bytes per weight/KV element.")
    max_context_tokens: PositiveInt = Field(description="Longest prompt + output the model serves.")
    rope_theta: PositiveFloat = 500000.0
    rms_norm_eps: PositiveFloat = 1e-5
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_group(self) -> ModelArch:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        return self

    @property
    def weight_bytes(self) -> int:
        return int(self.params_b * 1e9 * self.dtype_bytes)

    @property
    def weight_gib(self) -> float:
        return self.weight_bytes / GIB

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer of one token, over the whole model (all TP ranks together)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def flops_per_token(self) -> float:
        """Forward FLOPs per token from the weights (2 per parameter), attention over context excluded."""
        return 2.0 * self.params_b * 1e9

    @property
    def attn_flops_per_token_per_context(self) -> float:
        """Attention FLOPs per (query token × context token): QK^T and PV over every layer and head."""
        return 4.0 * self.num_layers * self.num_heads * self.head_dim

    def tp_allowed(self, tp: int) -> bool:
        """A TP degree must split the query heads evenly; KV heads are split or, when fewer, replicated."""
        if tp < 1 or self.num_heads % tp:
            return False
        return self.num_kv_heads % tp == 0 or tp % self.num_kv_heads == 0

    def allowed_tp_degrees(self, limit: int = 8) -> tuple[int, ...]:
        return tuple(t for t in (1, 2, 4, 8, 16) if t <= limit and self.tp_allowed(t))

    def kv_bytes_per_token_per_gpu(self, tp: int) -> int:
        """KV bytes one GPU of a TP group stores per token (KV heads are replicated when tp > num_kv_heads)."""
        kv_heads_per_gpu = max(1, math.ceil(self.num_kv_heads / tp))
        return 2 * self.num_layers * kv_heads_per_gpu * self.head_dim * self.dtype_bytes


def _gpu(**kw: object) -> GPUType:
    return GPUType.model_validate(kw)


GPU_CATALOG: dict[str, GPUType] = {
    g.name: g
    for g in (
        # NVIDIA A10 datasheet: 24 GB GDDR6, 600 GB/s, 125 TFLOPS bf16 dense, PCIe Gen4 x16.
        _gpu(name="A10", memory_gib=24, hbm_gbps=600, peak_tflops=125, pcie_gbps=32, price_per_hour=1.01),
        # NVIDIA L4 datasheet: 24 GB GDDR6, 300 GB/s, 121 TFLOPS bf16 dense, PCIe Gen4 x16.
        _gpu(name="L4", memory_gib=24, hbm_gbps=300, peak_tflops=121, pcie_gbps=32, price_per_hour=0.80),
        # NVIDIA A100 datasheet: 312 TFLOPS bf16 dense; 40 GB at 1,555 GB/s, 80 GB at 2,039 GB/s; NVLink 600 GB/s.
        _gpu(name="A100-40GB", memory_gib=40, hbm_gbps=1555, peak_tflops=312, pcie_gbps=32,
             nvlink_gbps=300, price_per_hour=3.67),
        _gpu(name="A100-80GB", memory_gib=80, hbm_gbps=2039, peak_tflops=312, pcie_gbps=32,
             nvlink_gbps=300, price_per_hour=4.10),
        # NVIDIA H100 SXM datasheet: 80 GB HBM3 at 3.35 TB/s, 989 TFLOPS bf16 dense, PCIe Gen5, NVLink 900 GB/s.
        _gpu(name="H100-SXM", memory_gib=80, hbm_gbps=3350, peak_tflops=989, pcie_gbps=64,
             nvlink_gbps=450, price_per_hour=4.50),
        # NVIDIA H200 SXM datasheet: 141 GB HBM3e at 4.8 TB/s, same compute as H100.
        _gpu(name="H200", memory_gib=141, hbm_gbps=4800, peak_tflops=989, pcie_gbps=64,
             nvlink_gbps=450, price_per_hour=5.50),
    )
}


def _arch(**kw: object) -> ModelArch:
    return ModelArch.model_validate(kw)


MODEL_CATALOG: dict[str, ModelArch] = {
    m.name: m
    for m in (
        _arch(name="Llama-3.2-1B", params_b=1.24, num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8,
              head_dim=64, intermediate_size=8192, vocab_size=128256, max_context_tokens=131072,
              tie_word_embeddings=True),
        _arch(name="Llama-3.2-3B", params_b=3.21, num_layers=28, hidden_size=3072, num_heads=24, num_kv_heads=8,
              head_dim=128, intermediate_size=8192, vocab_size=128256, max_context_tokens=131072,
              tie_word_embeddings=True),
        _arch(name="Llama-3.1-8B", params_b=8.03, num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
              head_dim=128, intermediate_size=14336, vocab_size=128256, max_context_tokens=131072),
        _arch(name="Llama-3.1-70B", params_b=70.6, num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
              head_dim=128, intermediate_size=28672, vocab_size=128256, max_context_tokens=131072),
        _arch(name="Mistral-7B", params_b=7.25, num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
              head_dim=128, intermediate_size=14336, vocab_size=32768, max_context_tokens=32768,
              rope_theta=1e6),
        _arch(name="Qwen2.5-7B", params_b=7.62, num_layers=28, hidden_size=3584, num_heads=28, num_kv_heads=4,
              head_dim=128, intermediate_size=18944, vocab_size=152064, max_context_tokens=32768,
              rope_theta=1e6, rms_norm_eps=1e-6),
        _arch(name="Qwen2.5-14B", params_b=14.7, num_layers=48, hidden_size=5120, num_heads=40, num_kv_heads=8,
              head_dim=128, intermediate_size=13824, vocab_size=152064, max_context_tokens=32768,
              rope_theta=1e6, rms_norm_eps=1e-6),
        _arch(name="Qwen2.5-32B", params_b=32.5, num_layers=64, hidden_size=5120, num_heads=40, num_kv_heads=8,
              head_dim=128, intermediate_size=27648, vocab_size=152064, max_context_tokens=32768,
              rope_theta=1e6, rms_norm_eps=1e-6),
        # Tiny Llama-layout models that run on a CPU: the engine's tests and the demo's local workers use them.
        # Vocabulary 259 = 256 byte values + BOS, EOS, PAD of the byte-level tokenizer.
        _arch(name="Tiny-Llama-2L", params_b=0.0001072, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
              head_dim=16, intermediate_size=128, vocab_size=259, max_context_tokens=1024, dtype_bytes=4,
              rope_theta=10000.0),
        _arch(name="Tiny-Llama-4L", params_b=0.0006245, num_layers=4, hidden_size=128, num_heads=8, num_kv_heads=2,
              head_dim=16, intermediate_size=256, vocab_size=259, max_context_tokens=2048, dtype_bytes=4,
              rope_theta=10000.0),
    )
}


def llama_param_count(arch: ModelArch) -> int:
    """Parameters implied by the architecture (embeddings, attention, SwiGLU MLP, norms, LM head)."""
    h, layers = arch.hidden_size, arch.num_layers
    attn = h * arch.num_heads * arch.head_dim + 2 * h * arch.num_kv_heads * arch.head_dim
    attn += arch.num_heads * arch.head_dim * h
    mlp = 3 * h * arch.intermediate_size
    per_layer = attn + mlp + 2 * h
    embed = arch.vocab_size * h
    head = 0 if arch.tie_word_embeddings else arch.vocab_size * h
    return embed + layers * per_layer + h + head
