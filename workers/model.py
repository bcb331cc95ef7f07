"""Llama-architecture decoder (RMSNorm, RoPE, GQA, SwiGLU) in plain torch, with attention left to the caller.

`LlamaModel.forward` runs a flat stream of tokens (any number of sequences, each token with its own position) and
calls an `AttentionFn` per layer with that layer's rotated queries, keys and values. The dense reference
(`workers.reference`) attends over whole sequences; the paged engine (`workers.runner`) writes K/V into pages and
attends over block tables. Everything but attention is therefore one piece of code for both, which is what makes
"the paged engine equals the dense forward token for token" a meaningful test.

Weights use Hugging Face Llama names in safetensors (`model.layers.{i}.self_attn.q_proj.weight`, …), so a local
directory of a real Llama checkpoint loads too (rope scaling of Llama 3.1 is not modelled: the catalog does not
carry it). In memory, q/k/v and gate/up are fused into one matrix each: one GEMM instead of three (two).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from core.catalog import ModelArch
from core.errors import InputError

# attend(layer, q [N, Hq, D], k [N, Hkv, D], v [N, Hkv, D]) -> [N, Hq, D]
AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def torch_dtype(arch: ModelArch) -> torch.dtype:
    """The dtype an architecture's weights and KV use: 4 bytes → fp32, 2 → bf16, 1 is not supported here."""
    dtypes = {4: torch.float32, 2: torch.bfloat16}
    if arch.dtype_bytes not in dtypes:
        raise InputError("arch.dtype_bytes", arch.dtype_bytes, "2 (bf16) or 4 (fp32) for the torch engine")
    return dtypes[arch.dtype_bytes]


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer. Linear weights are [out, in] (F.linear)."""

    attn_norm: torch.Tensor  # [hidden]
    wqkv: torch.Tensor  # [(Hq + 2·Hkv)·D, hidden]: q_proj, k_proj, v_proj stacked
    wo: torch.Tensor  # [hidden, Hq·D]
    mlp_norm: torch.Tensor  # [hidden]
    w_gate_up: torch.Tensor  # [2·intermediate, hidden]: gate_proj, up_proj stacked
    w_down: torch.Tensor  # [hidden, intermediate]


@dataclass(frozen=True)
class LlamaWeights:
    """All weights of one model, on one device."""

    arch: ModelArch
    embed: torch.Tensor  # [vocab, hidden]
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor  # [vocab, hidden]; the embedding itself when tied

    def tensors(self) -> list[torch.Tensor]:
        out = [self.embed, self.final_norm]
        if self.lm_head is not self.embed:
            out.append(self.lm_head)
        for layer in self.layers:
            out.extend(getattr(layer, f.name) for f in fields(LayerWeights))
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LlamaWeights:
        """The same model with `fn` applied to every tensor (a tied LM head stays tied)."""
        layers = tuple(LayerWeights(**{f.name: fn(getattr(ly, f.name)) for f in fields(LayerWeights)})
                       for ly in self.layers)
        embed = fn(self.embed)
        head = embed if self.lm_head is self.embed else fn(self.lm_head)
        return LlamaWeights(self.arch, embed, layers, fn(self.final_norm), head)

    def to(self, device: torch.device | str, *, pin_memory: bool = False) -> LlamaWeights:
        """A copy on `device`; `pin_memory` pins host copies (only meaningful when CUDA is present)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            moved = t.to(device, non_blocking=True)
            return moved.pin_memory() if pin_memory and moved.device.type == "cpu" else moved

        return self.map(move)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Hugging Face Llama names, q/k/v and gate/up split again."""
        a = self.arch
        q_rows, kv_rows = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        sd = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.final_norm}
        if self.lm_head is not self.embed:
            sd["lm_head.weight"] = self.lm_head
        for i, ly in enumerate(self.layers):
            p = f"model.layers.{i}."
            q, k, v = ly.wqkv.split([q_rows, kv_rows, kv_rows])
            gate, up = ly.w_gate_up.chunk(2)
            sd |= {
                p + "input_layernorm.weight": ly.attn_norm, p + "post_attention_layernorm.weight": ly.mlp_norm,
                p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": ly.wo,
                p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": ly.w_down,
            }
        return {k: v.contiguous() for k, v in sd.items()}


def random_weights(arch: ModelArch, seed: int, *, device: str | torch.device = "cpu") -> LlamaWeights:
    """Weights drawn from a seed: linears N(0, 1/fan_in) so activations keep their scale, norms at one."""
    gen = torch.Generator().manual_seed(seed)
    dtype = torch_dtype(arch)
    h, d = arch.hidden_size, arch.head_dim

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        w = torch.randn(out_features, in_features, generator=gen) / math.sqrt(in_features)
        return w.to(dtype)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=dtype)

    layers = tuple(
        LayerWeights(
            attn_norm=ones(h),
            wqkv=linear((arch.num_heads + 2 * arch.num_kv_heads) * d, h),
            wo=linear(h, arch.num_heads * d),
            mlp_norm=ones(h),
            w_gate_up=linear(2 * arch.intermediate_size, h),
            w_down=linear(h, arch.intermediate_size),
        )
        for _ in range(arch.num_layers)
    )
    embed = torch.randn(arch.vocab_size, h, generator=gen).to(dtype)
    head = embed if arch.tie_word_embeddings else linear(arch.vocab_size, h)
    weights = LlamaWeights(arch, embed, layers, ones(h), head)
    return weights.to(device) if torch.device(device).type != "cpu" else weights


def save_safetensors(weights: LlamaWeights, directory: str | Path) -> Path:
    """Write `model.safetensors` (Hugging Face names) into `directory`; returns the file."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    file = path / "model.safetensors"
    save_file({k: v.cpu() for k, v in weights.state_dict().items()}, str(file))
    return file


def load_safetensors(arch: ModelArch, directory: str | Path) -> LlamaWeights:
    """Read every `*.safetensors` file of `directory` (CPU tensors); raises InputError naming what is missing."""
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise InputError("weights_dir", str(directory), "a directory holding *.safetensors files")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd |= load_file(str(f))
    dtype = torch_dtype(arch)

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in sd:
            raise InputError(f"{directory}: tensor {name}", None, f"a Llama checkpoint of {arch.name}",
                             problem="missing")
        t = sd[name]
        if tuple(t.shape) != shape:
            raise InputError(f"{directory}: tensor {name}", tuple(t.shape), f"shape {shape} for {arch.name}")
        return t.to(dtype)

    h, d, i_sz = arch.hidden_size, arch.head_dim, arch.intermediate_size
    hq, hkv = arch.num_heads * d, arch.num_kv_heads * d
    layers = []
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        qkv = [take(p + f"self_attn.{n}_proj.weight", (r, h)) for n, r in (("q", hq), ("k", hkv), ("v", hkv))]
        gate_up = [take(p + f"mlp.{n}_proj.weight", (i_sz, h)) for n in ("gate", "up")]
        layers.append(LayerWeights(
            attn_norm=take(p + "input_layernorm.weight", (h,)), wqkv=torch.cat(qkv),
            wo=take(p + "self_attn.o_proj.weight", (h, hq)), mlp_norm=take(p + "post_attention_layernorm.weight", (h,)),
            w_gate_up=torch.cat(gate_up), w_down=take(p + "mlp.down_proj.weight", (h, i_sz)),
        ))
    embed = take("model.embed_tokens.weight", (arch.vocab_size, h))
    tied = arch.tie_word_embeddings or "lm_head.weight" not in sd
    head = embed if tied else take("lm_head.weight", (arch.vocab_size, h))
    return LlamaWeights(arch, embed, tuple(layers), take("model.norm.weight", (h,)), head)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 (as Hugging Face Llama does), returned in the input dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RotaryTable:
    """cos/sin of every position up to the model's context, in the non-interleaved (rotate-half) layout."""

    def __init__(self, arch: ModelArch, device: torch.device) -> None:
        d = arch.head_dim
        inv_freq = 1.0 / (arch.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angles = torch.outer(torch.arange(arch.max_context_tokens, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.cos = angles.cos().to(device=device, dtype=torch.float32)
        self.sin = angles.sin().to(device=device, dtype=torch.float32)

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate `x` [N, heads, D] by the angles of `positions` [N]."""
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        xf = x.float()
        half = xf.shape[-1] // 2
        rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)


class LlamaModel:
    """Forward passes of one model over flat token streams. Holds the weights; holds no KV cache."""

    def __init__(self, weights: LlamaWeights) -> None:
        self.weights = weights
        self.arch = weights.arch
        self.rope = RotaryTable(weights.arch, weights.device)
        a = self.arch
        self._splits = [a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.head_dim]

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        """Hidden states [N, hidden] after the final norm, for tokens [N] at positions [N]."""
        a, w = self.arch, self.weights
        x = w.embed[token_ids]
        for i, layer in enumerate(w.layers):
            h = rms_norm(x, layer.attn_norm, a.rms_norm_eps)
            q, k, v = F.linear(h, layer.wqkv).split(self._splits, dim=-1)
            q = self.rope.apply(q.view(-1, a.num_heads, a.head_dim), positions)
            k = self.rope.apply(k.view(-1, a.num_kv_heads, a.head_dim), positions)
            v = v.reshape(-1, a.num_kv_heads, a.head_dim)
            attn = attend(i, q, k, v)
            x = x + F.linear(attn.reshape(attn.shape[0], -1), layer.wo)
            h = rms_norm(x, layer.mlp_norm, a.rms_norm_eps)
            gate, up = F.linear(h, layer.w_gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.w_down)
        return rms_norm(x, w.final_norm, a.rms_norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits in fp32 for hidden states [N, hidden]."""
        return F.linear(hidden, self.weights.lm_head).float()
