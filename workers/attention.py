"""Attention over the paged KV cache for one forward pass: the torch path (CPU) and the Triton path (CUDA).

A forward pass runs a flat token stream: first the decode tokens (one per decoding sequence), then the prefill
chunks. `AttentionBatch` describes it once; each backend turns it into what it needs (`prepare`) and then serves
every layer with the same prepared state: write the new K/V into the pages, attend decode rows and prefill rows.
Both backends read the same block tables and page layout (`workers.kernels.layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from workers.kernels.kv_write import kv_write_ref


@dataclass(frozen=True)
class AttentionBatch:
    """The attention view of one forward pass (tensors on the model's device, ints on the host)."""

    slots: torch.Tensor  # [N] flat slot (block_id·block_size + offset) of every token of the pass
    num_decode: int  # the first num_decode tokens are decode tokens, one per sequence
    decode_block_tables: torch.Tensor  # [num_decode, max_blocks] block ids (padding: any valid id)
    decode_context_lens: torch.Tensor  # [num_decode] tokens attended, the new one included
    decode_max_context: int  # host-side max of decode_context_lens
    prefill_cu_q_lens: torch.Tensor  # [num_prefill + 1] row offsets of each chunk, relative to num_decode
    prefill_block_tables: torch.Tensor  # [num_prefill, max_blocks]
    prefill_context_lens: torch.Tensor  # [num_prefill] tokens after the chunk (cached prefix + chunk)
    prefill_max_q_len: int  # host-side max chunk length
    prefill_max_context: int  # host-side max of prefill_context_lens

    @property
    def num_prefill(self) -> int:
        return self.prefill_cu_q_lens.shape[0] - 1


class AttentionBackend(Protocol):
    """Serves attention for every layer of one forward pass over one model's paged KV views."""

    def prepare(self, batch: AttentionBatch, block_size: int, blocks_per_page: int) -> Any:
        """Precompute what all layers share (gather indices, masks); returns an opaque state."""

    def attend(self, state: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor) -> torch.Tensor:
        """Write k/v [N, Hkv, D] into the layer's pages, then attend q [N, Hq, D] → [N, Hq, D]."""


@dataclass(frozen=True)
class _Gather:
    """Indices that gather B padded contexts of T tokens from one layer's view, and the visibility mask."""

    page: torch.Tensor  # [B, T]
    slot: torch.Tensor  # [B, T]
    offset: torch.Tensor  # [1, T]
    mask: torch.Tensor  # [B, Tq, T] bool: query row i of sequence b may see key t


@dataclass(frozen=True)
class _TorchState:
    batch: AttentionBatch
    decode: _Gather | None
    prefill: _Gather | None
    prefill_rows: torch.Tensor | None  # [P, Qmax] flat row of each (chunk, query), padding → 0
    prefill_valid: torch.Tensor | None  # [P, Qmax] bool


def _gather_indices(block_tables: torch.Tensor, context_lens: torch.Tensor, q_lens: torch.Tensor, max_context: int,
                    max_q: int, block_size: int, blocks_per_page: int) -> _Gather:
    device = block_tables.device
    t = torch.arange(max_context, device=device)
    blocks = block_tables[:, torch.div(t, block_size, rounding_mode="floor")].long()
    q_pos = context_lens[:, None] - q_lens[:, None] + torch.arange(max_q, device=device)[None, :]  # [B, Tq]
    mask = t[None, None, :] <= q_pos[:, :, None]
    return _Gather(page=torch.div(blocks, blocks_per_page, rounding_mode="floor"), slot=blocks % blocks_per_page,
                   offset=(t % block_size)[None, :], mask=mask)


def _padded_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, g: _Gather) -> torch.Tensor:
    """q [B, Tq, Hq, D] over gathered keys [B, T, Hkv, D] → [B, Tq, Hq, D]."""
    k = k_cache[g.page, g.slot, g.offset].transpose(1, 2)
    v = v_cache[g.page, g.slot, g.offset].transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=g.mask[:, None], enable_gqa=True)
    return out.transpose(1, 2)


class TorchAttention:
    """Attention with plain torch ops: gather each sequence's context through its block table into a padded
    batch, then one `scaled_dot_product_attention` with a visibility mask. The KV buffer is zero-initialised, so
    padding gathers finite values that the mask hides.
    """

    def prepare(self, batch: AttentionBatch, block_size: int, blocks_per_page: int) -> _TorchState:
        decode = prefill = rows = valid = None
        if batch.num_decode:
            ones = torch.ones_like(batch.decode_context_lens)
            decode = _gather_indices(batch.decode_block_tables, batch.decode_context_lens, ones,
                                     batch.decode_max_context, 1, block_size, blocks_per_page)
        if batch.num_prefill:
            cu = batch.prefill_cu_q_lens
            q_lens = cu[1:] - cu[:-1]
            prefill = _gather_indices(batch.prefill_block_tables, batch.prefill_context_lens, q_lens,
                                      batch.prefill_max_context, batch.prefill_max_q_len, block_size, blocks_per_page)
            i = torch.arange(batch.prefill_max_q_len, device=cu.device)[None, :]
            valid = i < q_lens[:, None]
            rows = torch.where(valid, batch.num_decode + cu[:-1, None] + i, 0)
        return _TorchState(batch, decode, prefill, rows, valid)

    def attend(self, state: _TorchState, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor) -> torch.Tensor:
        kv_write_ref(k, v, k_cache, v_cache, state.batch.slots)
        nd = state.batch.num_decode
        parts = []
        if state.decode is not None:
            parts.append(_padded_attention(q[:nd, None], k_cache, v_cache, state.decode)[:, 0])
        if state.prefill is not None:
            out = _padded_attention(q[state.prefill_rows], k_cache, v_cache, state.prefill)
            parts.append(out[state.prefill_valid])
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class TritonAttention:
    """Attention with the Triton kernels (compiled on CUDA; under TRITON_INTERPRET=1 on CPU for tests)."""

    def __init__(self, *, decode_splits: int | None = None, block_m: int = 64, block_n: int = 64) -> None:
        self.decode_splits = decode_splits
        self.block_m = block_m
        self.block_n = block_n

    def prepare(self, batch: AttentionBatch, block_size: int, blocks_per_page: int) -> AttentionBatch:
        return batch

    def attend(self, state: AttentionBatch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor) -> torch.Tensor:
        from workers.kernels.decode_attention import paged_decode_attention
        from workers.kernels.kv_write import kv_write
        from workers.kernels.prefill_attention import paged_prefill_attention

        kv_write(k, v, k_cache, v_cache, state.slots)
        nd = state.num_decode
        out = torch.empty_like(q)
        if nd:
            out[:nd] = paged_decode_attention(
                q[:nd], k_cache, v_cache, state.decode_block_tables, state.decode_context_lens,
                max_context=state.decode_max_context, num_splits=self.decode_splits, block_n=self.block_n,
            )
        if state.num_prefill:
            out[nd:] = paged_prefill_attention(
                q[nd:], k_cache, v_cache, state.prefill_cu_q_lens, state.prefill_block_tables,
                state.prefill_context_lens, max_q_len=state.prefill_max_q_len, block_m=self.block_m,
                block_n=self.block_n,
            )
        return out


def default_backend(device: torch.device) -> AttentionBackend:
    """Triton kernels on CUDA, the torch path elsewhere."""
    return TritonAttention() if device.type == "cuda" else TorchAttention()
