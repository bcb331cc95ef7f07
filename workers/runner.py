"""ModelRunner: one model's forward pass over the paged KV cache, and sampling.

The engine hands it a list of `SeqWork` (which tokens of which sequence to compute this iteration, and where their
KV goes); it builds the flat token stream (decode tokens first, then prefill chunks), the `AttentionBatch`, runs
`LlamaModel.forward` with the paged attention backend and samples one token for every sequence that asked.

Sampling is greedy at temperature 0; otherwise it draws from softmax(logits / T) with a generator seeded by
(request seed, position), so a sequence's output does not depend on what it was batched with or on whether it was
preempted and resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.attention import AttentionBackend, AttentionBatch, default_backend
from workers.kernels.layout import PagedKVLayout, kv_views
from workers.model import LlamaModel


@dataclass(frozen=True, slots=True)
class SeqWork:
    """One sequence's share of a forward pass."""

    seq_id: int
    token_ids: tuple[int, ...]  # tokens whose KV this pass computes (decode: the last sampled token)
    start_pos: int  # position of token_ids[0]
    block_ids: Sequence[int]  # block table covering start_pos + len(token_ids) tokens
    sample: bool  # sample the next token after token_ids[-1]
    temperature: float = 0.0  # 0: greedy
    seed: int = 0  # sampling seed (temperature > 0)

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.token_ids)


class ModelRunner:
    """Runs one resident model over its KV views of the device's shared page buffer."""

    def __init__(self, model: LlamaModel, kv_buffer: torch.Tensor, layout: PagedKVLayout,
                 backend: AttentionBackend | None = None) -> None:
        self.model = model
        self.layout = layout
        self.k_cache, self.v_cache = kv_views(kv_buffer, layout)
        self.backend = backend or default_backend(model.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def run(self, work: Sequence[SeqWork]) -> dict[int, int]:
        """Compute KV for every `work` item and sample where asked; returns {seq_id: next token}."""
        if not work:
            return {}
        decode = [w for w in work if len(w.token_ids) == 1]
        prefill = [w for w in work if len(w.token_ids) > 1]
        ordered = decode + prefill
        batch = self._attention_batch(decode, prefill)
        dev = self.device
        token_ids = torch.tensor([t for w in ordered for t in w.token_ids], device=dev)
        positions = torch.tensor([p for w in ordered for p in range(w.start_pos, w.end_pos)], device=dev)
        state = self.backend.prepare(batch, self.layout.block_size, self.layout.blocks_per_page)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return self.backend.attend(state, q, k, v, self.k_cache[:, layer], self.v_cache[:, layer])

        hidden = self.model.forward(token_ids, positions, attend)
        last_rows, sampled = [], []
        row = 0
        for w in ordered:
            row += len(w.token_ids)
            if w.sample:
                last_rows.append(row - 1)
                sampled.append(w)
        if not sampled:
            return {}
        logits = self.model.logits(hidden[torch.tensor(last_rows, device=dev)])
        return dict(zip((w.seq_id for w in sampled), sample_tokens(logits, sampled), strict=True))

    def _attention_batch(self, decode: list[SeqWork], prefill: list[SeqWork]) -> AttentionBatch:
        bs, dev = self.layout.block_size, self.device
        slots = [w.block_ids[p // bs] * bs + p % bs for w in decode + prefill for p in range(w.start_pos, w.end_pos)]
        cu = [0]
        for w in prefill:
            cu.append(cu[-1] + len(w.token_ids))
        return AttentionBatch(
            slots=torch.tensor(slots, device=dev),
            num_decode=len(decode),
            decode_block_tables=_block_tables(decode, dev),
            decode_context_lens=torch.tensor([w.end_pos for w in decode], dtype=torch.int32, device=dev),
            decode_max_context=max((w.end_pos for w in decode), default=0),
            prefill_cu_q_lens=torch.tensor(cu, dtype=torch.int32, device=dev),
            prefill_block_tables=_block_tables(prefill, dev),
            prefill_context_lens=torch.tensor([w.end_pos for w in prefill], dtype=torch.int32, device=dev),
            prefill_max_q_len=max((len(w.token_ids) for w in prefill), default=0),
            prefill_max_context=max((w.end_pos for w in prefill), default=0),
        )


def _block_tables(work: list[SeqWork], device: torch.device) -> torch.Tensor:
    """[len(work), max blocks] int32, padded with block 0 (a valid id: padding is masked, never trusted)."""
    width = max((len(w.block_ids) for w in work), default=0)
    rows = [list(w.block_ids) + [0] * (width - len(w.block_ids)) for w in work]
    return torch.tensor(rows, dtype=torch.int32, device=device).view(len(work), width)


def sample_tokens(logits: torch.Tensor, work: Sequence[SeqWork]) -> list[int]:
    """One token per row of `logits` [M, vocab]: argmax at temperature 0, else a seeded draw."""
    tokens = logits.argmax(-1).tolist()
    for i, w in enumerate(work):
        if w.temperature > 0:
            probs = torch.softmax(logits[i].float() / w.temperature, dim=-1).cpu()
            gen = torch.Generator().manual_seed(hash((w.seed, w.end_pos)) & 0x7FFF_FFFF_FFFF_FFFF)
            tokens[i] = int(torch.multinomial(probs, 1, generator=gen))
    return tokens
