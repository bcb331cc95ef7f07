"""Attention over the paged KV cache for one forward pass: the torch path (CPU) and the Triton path (CUDA).

A forward pass runs a flat token stream: first the decode tokens (one per decoding sequence), then the prefill
chunks. `AttentionBatch` describes it once; each backend turns it into what it needs (`prepare`) and then serves
every layer with the same prepared state: write the new K/V into the pages, attend decode rows and prefill rows.
Both backends read the same block tables and page layout (`workers.kernels.layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from workers.kernels.layout import PagedKVLayout


@dataclass(frozen=True)
class AttentionBatch:
    """The attention view of one forward pass: host arrays, and their device tensors on demand (Triton path).

    Sequence rows are decode sequences first (one query token each), then prefill chunks.
    """

    device: torch.device
    num_decode: int  # the first num_decode sequences (and tokens) decode one token each
    slots: np.ndarray  # [N] int64 flat slot (block_id·block_size + offset) of every token; < 0: not written
    block_tables: np.ndarray  # [S, max_blocks] int32 block ids (padding: block 0, masked, never trusted)
    context_lens: np.ndarray  # [S] int32 tokens each sequence attends over, this pass's included
    q_lens: np.ndarray  # [S] int64 tokens each sequence computes in this pass (decode: 1)

    @property
    def num_prefill(self) -> int:
        return len(self.q_lens) - self.num_decode

    @property
    def decode_max_context(self) -> int:
        return int(self.context_lens[: self.num_decode].max(initial=0))

    @property
    def prefill_max_context(self) -> int:
        return int(self.context_lens[self.num_decode :].max(initial=0))

    @property
    def prefill_max_q_len(self) -> int:
        return int(self.q_lens[self.num_decode :].max(initial=0))

    @property
    def prefill_cu_q_lens(self) -> np.ndarray:
        """[num_prefill + 1] row offsets of each chunk among the prefill tokens."""
        return np.concatenate([[0], np.cumsum(self.q_lens[self.num_decode :])]).astype(np.int32)

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    @cached_property
    def device_tensors(self) -> dict[str, torch.Tensor]:
        """What the kernels read: slots, per-kind block tables, context lengths and chunk offsets."""
        nd = self.num_decode
        return {
            "slots": self.tensor(self.slots), "decode_block_tables": self.tensor(self.block_tables[:nd]),
            "decode_context_lens": self.tensor(self.context_lens[:nd]),
            "prefill_block_tables": self.tensor(self.block_tables[nd:]),
            "prefill_context_lens": self.tensor(self.context_lens[nd:]),
            "prefill_cu_q_lens": self.tensor(self.prefill_cu_q_lens),
        }


class AttentionBackend(Protocol):
    """Serves attention for every layer of one forward pass over one model's paged KV views."""

    def prepare(self, batch: AttentionBatch, layout: PagedKVLayout, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> Any:
        """Precompute what all layers share (gather indices, masks) for the model's K/V views
        `[pages, layers, blocks_per_page, block_size, Hkv, D]`; returns an opaque state."""

    def attend(self, state: Any, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write k/v [N, Hkv, D] into the layer's pages, then attend q [N, Hq, D] → [N, Hq, D]."""


@dataclass(frozen=True)
class _Gather:
    """Block halves (one layer's K, or V, of one block) of B padded contexts of T tokens, and visibility."""

    rows: torch.Tensor  # [2·B·T/block_size] long: the K half of every (sequence, block), then the V halves
    shape: tuple[int, int]  # (B, T), T a multiple of the block size
    mask: torch.Tensor  # [B, Tq, T] bool: query row i of sequence b may see key t


@dataclass(frozen=True)
class _TorchState:
    batch: AttentionBatch
    token_rows: torch.Tensor  # the whole KV buffer as rows of one token's K (or V): kv_heads · head_dim elements
    block_rows: torch.Tensor  # the same buffer as rows of one block half: block_size token rows
    token_first: list[int]  # first token row of each layer's segment
    block_first: list[int]  # first block row of each layer's segment
    write_k: torch.Tensor  # [N'] K token rows (relative to the layer) the pass writes: tokens with a slot ≥ 0
    write_v: torch.Tensor  # [N'] their V rows
    write_keep: torch.Tensor | None  # [N] bool: tokens written (None: all of them)
    decode: _Gather | None
    prefill: _Gather | None
    prefill_rows: torch.Tensor | None  # [P, Qmax] flat row of each (chunk, query), padding → 0
    prefill_valid: torch.Tensor | None  # [P, Qmax] bool


def _block_halves(blocks: np.ndarray, layout: PagedKVLayout) -> np.ndarray:
    """Block-half row of each block's K in layer 0 (its V is the next row)."""
    half, bpp = layout.stride_kv, layout.blocks_per_page
    return (blocks // bpp) * (layout.stride_page // half) + (blocks % bpp) * (layout.stride_slot // half)


def _gather_indices(block_tables: np.ndarray, context_lens: np.ndarray, q_lens: np.ndarray, max_context: int,
                    max_q: int, layout: PagedKVLayout, device: torch.device) -> _Gather:
    num_blocks = -(-max_context // layout.block_size)
    k_rows = _block_halves(block_tables[:, :num_blocks].astype(np.int64), layout).ravel()
    t = np.arange(num_blocks * layout.block_size)
    q_pos = (context_lens - q_lens)[:, None] + np.arange(max_q)[None, :]  # [B, Tq]
    mask = t[None, None, :] <= q_pos[:, :, None]
    # Whole block halves, K then V: one index_select per layer copying runs of block_size tokens.
    rows = np.concatenate([k_rows, k_rows + 1])
    return _Gather(rows=_tensor(rows, device), shape=(len(block_tables), len(t)), mask=_tensor(mask, device))


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array).to(device)


def _as_rows(cache: torch.Tensor, row_elems: int) -> torch.Tensor:
    """The whole buffer behind a view, as rows of `row_elems` elements."""
    total = cache.untyped_storage().nbytes() // cache.element_size()
    return torch.as_strided(cache, (total // row_elems, row_elems), (row_elems, 1), 0)


def _padded_attention(q: torch.Tensor, block_rows: torch.Tensor, g: _Gather, kv_heads: int) -> torch.Tensor:
    """q [B, Tq, Hq, D] over gathered keys [B, T, Hkv, D] → [B, Tq, Hq, D]."""
    b, t = g.shape
    kv = block_rows.index_select(0, g.rows).view(2, b, t, kv_heads, q.shape[-1]).transpose(2, 3)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), kv[0], kv[1], attn_mask=g.mask[:, None],
                                         enable_gqa=True)
    return out.transpose(1, 2)


class TorchAttention:
    """Attention with plain torch ops: gather each sequence's context through its block table into a padded
    batch — one `index_select` of whole block halves per layer (the layout keeps a block's K, and its V, for one
    layer contiguous) — then one `scaled_dot_product_attention` with a visibility mask. The KV buffer is
    zero-initialised, so padding gathers finite values that the mask hides.
    """

    def prepare(self, batch: AttentionBatch, layout: PagedKVLayout, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> _TorchState:
        # Index arithmetic on small host arrays: numpy costs a fraction of a torch op each.
        dev, nd = k_cache.device, batch.num_decode
        decode = prefill = rows = valid = None
        if nd:
            decode = _gather_indices(batch.block_tables[:nd], batch.context_lens[:nd], batch.q_lens[:nd],
                                     batch.decode_max_context, 1, layout, dev)
        if batch.num_prefill:
            q_lens, cu = batch.q_lens[nd:], batch.prefill_cu_q_lens.astype(np.int64)
            prefill = _gather_indices(batch.block_tables[nd:], batch.context_lens[nd:], q_lens,
                                      batch.prefill_max_context, batch.prefill_max_q_len, layout, dev)
            i = np.arange(batch.prefill_max_q_len)[None, :]
            valid_np = i < q_lens[:, None]
            rows = _tensor(np.where(valid_np, nd + cu[:-1, None] + i, 0), dev)
            valid = _tensor(valid_np, dev)
        keep = batch.slots >= 0
        slots = batch.slots[keep]
        bs, row = layout.block_size, layout.stride_token
        write = _block_halves(slots // bs, layout) * bs + slots % bs
        layers = range(layout.num_layers)
        token_first = [(k_cache.storage_offset() + layer * layout.stride_layer) // row for layer in layers]
        return _TorchState(
            batch, _as_rows(k_cache, row), _as_rows(k_cache, layout.stride_kv), token_first,
            [first // bs for first in token_first], _tensor(write, dev), _tensor(write + bs, dev),
            None if keep.all() else _tensor(keep, dev), decode, prefill, rows, valid,
        )

    def attend(self, state: _TorchState, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        tokens = state.token_rows[state.token_first[layer]:]  # views: row indices are relative to the layer
        blocks = state.block_rows[state.block_first[layer]:]
        if state.write_keep is not None:
            k, v = k[state.write_keep], v[state.write_keep]
        tokens.index_copy_(0, state.write_k, k.reshape(k.shape[0], tokens.shape[1]).to(tokens.dtype))
        tokens.index_copy_(0, state.write_v, v.reshape(v.shape[0], tokens.shape[1]).to(tokens.dtype))
        nd, heads = state.batch.num_decode, k.shape[1]
        parts = []
        if state.decode is not None:
            parts.append(_padded_attention(q[:nd, None], blocks, state.decode, heads)[:, 0])
        if state.prefill is not None:
            parts.append(_padded_attention(q[state.prefill_rows], blocks, state.prefill, heads)[state.prefill_valid])
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class TritonAttention:
    """Attention with the Triton kernels (compiled on CUDA; under TRITON_INTERPRET=1 on CPU for tests)."""

    def __init__(self, *, decode_splits: int | None = None, block_m: int = 64, block_n: int = 64) -> None:
        self.decode_splits = decode_splits
        self.block_m = block_m
        self.block_n = block_n

    def prepare(self, batch: AttentionBatch, layout: PagedKVLayout, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> tuple[AttentionBatch, torch.Tensor, torch.Tensor]:
        return batch, k_cache, v_cache

    def attend(self, state: tuple[AttentionBatch, torch.Tensor, torch.Tensor], layer: int, q: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from workers.kernels.decode_attention import paged_decode_attention
        from workers.kernels.kv_write import kv_write
        from workers.kernels.prefill_attention import paged_prefill_attention

        batch, k_cache, v_cache = state[0], state[1][:, layer], state[2][:, layer]
        t = batch.device_tensors
        kv_write(k, v, k_cache, v_cache, t["slots"])
        nd = batch.num_decode
        out = torch.empty_like(q)
        if nd:
            out[:nd] = paged_decode_attention(
                q[:nd], k_cache, v_cache, t["decode_block_tables"], t["decode_context_lens"],
                max_context=batch.decode_max_context, num_splits=self.decode_splits, block_n=self.block_n,
            )
        if batch.num_prefill:
            out[nd:] = paged_prefill_attention(
                q[nd:], k_cache, v_cache, t["prefill_cu_q_lens"], t["prefill_block_tables"],
                t["prefill_context_lens"], max_q_len=batch.prefill_max_q_len, block_m=self.block_m,
                block_n=self.block_n,
            )
        return out


def default_backend(device: torch.device) -> AttentionBackend:
    """Triton kernels on CUDA, the torch path elsewhere."""
    return TritonAttention() if device.type == "cuda" else TorchAttention()
