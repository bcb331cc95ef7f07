"""Dense references for the paged engine: the same `LlamaModel`, attention over contiguous tensors.

- `dense_generate` recomputes the whole sequence at every step (no cache at all): the ground truth the paged engine
  must equal token for token under greedy decoding.
- `DenseDecoder` keeps a contiguous per-sequence KV cache `[layers, batch, kv_heads, max_tokens, head_dim]`: the
  throughput baseline of `bench/engine.py` (what a non-paged engine does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.model import LlamaModel


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention of one sequence: q [T, Hq, D], k/v [T, Hkv, D] → [T, Hq, D]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
    )
    return out.transpose(0, 1)


def dense_logits(model: LlamaModel, token_ids: list[int]) -> torch.Tensor:
    """Logits [T, vocab] of every position of one sequence, no cache."""
    ids = torch.tensor(token_ids, device=model.device)
    positions = torch.arange(len(token_ids), device=model.device)
    hidden = model.forward(ids, positions, lambda _layer, q, k, v: causal_attention(q, k, v))
    return model.logits(hidden)


def dense_generate(model: LlamaModel, prompt: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Greedy continuation of `prompt`, recomputing the full sequence each step; stops at `eos_id`."""
    seq = list(prompt)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(dense_logits(model, seq)[-1].argmax())
            out.append(token)
            seq.append(token)
            if token == eos_id:
                break
    return out


class DenseDecoder:
    """Greedy batched decoding with one contiguous KV cache per sequence slot (the non-paged baseline)."""

    def __init__(self, model: LlamaModel, batch_size: int, max_tokens: int) -> None:
        a = model.arch
        self.model = model
        shape = (a.num_layers, batch_size, a.num_kv_heads, max_tokens, a.head_dim)
        self.k = torch.zeros(shape, dtype=model.weights.embed.dtype, device=model.device)
        self.v = torch.zeros_like(self.k)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=model.device)

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Fill slots 0..len(prompts)-1 with their prompts (one at a time); returns the first tokens [B]."""
        firsts = []
        for slot, prompt in enumerate(prompts):
            ids = torch.tensor(prompt, device=self.model.device)
            pos = torch.arange(len(prompt), device=self.model.device)

            def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: int = slot) -> torch.Tensor:
                self.k[layer, slot, :, : k.shape[0]] = k.transpose(0, 1)
                self.v[layer, slot, :, : v.shape[0]] = v.transpose(0, 1)
                return causal_attention(q, k, v)

            hidden = self.model.forward(ids, pos, attend)
            self.lengths[slot] = len(prompt)
            firsts.append(self.model.logits(hidden[-1:]).argmax(-1))
        return torch.cat(firsts)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step for every slot: appends `tokens` [B] and returns the next greedy tokens [B]."""
        batch = torch.arange(tokens.shape[0], device=tokens.device)
        pos = self.lengths.clone()
        t_max = int(pos.max()) + 1
        mask = torch.arange(t_max, device=tokens.device)[None, :] <= pos[:, None]  # [B, T]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[layer, batch, :, pos] = k
            self.v[layer, batch, :, pos] = v
            out = F.scaled_dot_product_attention(
                q.unsqueeze(2), self.k[layer, :, :, :t_max], self.v[layer, :, :, :t_max],
                attn_mask=mask[:, None, None, :], enable_gqa=True,
            )
            return out.squeeze(2)

        hidden = self.model.forward(tokens, pos, attend)
        self.lengths += 1
        return self.model.logits(hidden).argmax(-1)
