"""The physical KV memory of one device: the shared device page buffer and the host buffer for swapped-out and
checkpointed KV, and the copies between them.

`workers.kv_pool.KVPool` does the accounting (which model owns which page, block tables, limits, host bytes); this
module realises it. Device page `p` of the pool is bytes `[p·page_bytes, (p+1)·page_bytes)` of one buffer, laid out
per model as `workers.kernels.layout` describes. Host blocks are placed by a second `KVPool` over the host buffer
(the same allocation rules and layouts): a sequence's j-th host block mirrors its j-th device block, so a
`KVTransfer` of tokens [first, first + n) maps block for block. Copies run as one `copy_blocks` launch per model and
direction (Triton on CUDA, where the host buffer is pinned and read by the GPU directly; indexed torch copies on CPU).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

from workers.kernels.layout import PagedKVLayout, kv_views
from workers.kv_pool import KVLayout, KVPool
from workers.sequence import KVTransfer

# Host pages beyond the host capacity the scheduler accounts in bytes: each model may leave one host page partly
# used, which the byte count does not see.
HOST_SLACK_PAGES_PER_MODEL = 1
MAX_MODELS = 16


def pool_layout(layout: PagedKVLayout) -> KVLayout:
    """The accounting view of a physical layout (the same block ids and blocks per page)."""
    return KVLayout(bytes_per_token=layout.bytes_per_token, block_size_tokens=layout.block_size,
                    num_layers=layout.num_layers)


class KVMemory:
    """Device and host KV buffers of one device (see the module docstring). Not thread-safe: the engine locks."""

    def __init__(self, *, num_pages: int, page_bytes: int, host_capacity_bytes: int, device: torch.device) -> None:
        self.device = device
        self.page_bytes = page_bytes
        self.device_buffer = torch.zeros(num_pages * page_bytes, dtype=torch.uint8, device=device)
        host_pages = -(-host_capacity_bytes // page_bytes) + HOST_SLACK_PAGES_PER_MODEL * MAX_MODELS
        self.host_buffer = torch.zeros(host_pages * page_bytes, dtype=torch.uint8,
                                       pin_memory=device.type == "cuda")
        self.host_pool = KVPool(host_pages, page_bytes=page_bytes)
        self._layouts: dict[str, PagedKVLayout] = {}
        self._device_views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._host_views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._host_model: dict[int, str] = {}  # sequence id → model, for sequences holding host blocks

    @property
    def device_bytes(self) -> int:
        return self.device_buffer.numel()

    def add_model(self, model: str, layout: PagedKVLayout) -> None:
        if model in self._layouts:
            return
        if layout.page_bytes != self.page_bytes:
            raise ValueError(f"layout pages of {layout.page_bytes} bytes, buffer pages of {self.page_bytes}")
        self._layouts[model] = layout
        self._device_views[model] = kv_views(self.device_buffer, layout)
        self._host_views[model] = kv_views(self.host_buffer, layout)
        self.host_pool.add_model(model, pool_layout(layout))

    def remove_model(self, model: str) -> None:
        for seq_id in [s for s, m in self._host_model.items() if m == model]:
            self.release_host(seq_id)
        self._layouts.pop(model, None)
        self._device_views.pop(model, None)
        self._host_views.pop(model, None)
        if self.host_pool.has_model(model):
            self.host_pool.remove_model(model)

    def device_views(self, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._device_views[model]

    def to_host(self, transfers: Iterable[KVTransfer]) -> int:
        """Copy device blocks to the sequences' host blocks (swap-out, checkpoint). Returns blocks copied."""
        return self._copy(transfers, to_host=True)

    def to_device(self, transfers: Iterable[KVTransfer]) -> int:
        """Copy host blocks back into the sequences' new device blocks (swap-in). Returns blocks copied."""
        return self._copy(transfers, to_host=False)

    def host_tokens(self, seq_id: int) -> int:
        """Tokens the host blocks of the sequence can hold (0: none)."""
        table = self.host_pool.block_table(seq_id)
        model = self._host_model.get(seq_id)
        return len(table) * self._layouts[model].block_size if model else 0

    def release_host(self, seq_id: int) -> None:
        self.host_pool.free(seq_id)
        self._host_model.pop(seq_id, None)

    def sync_host(self, pool: KVPool) -> None:
        """Free host blocks of sequences whose host copy the accounting pool has dropped."""
        for seq_id in [s for s in self._host_model if pool.host_tokens(s) == 0]:
            self.release_host(seq_id)

    # -- internals ---------------------------------------------------------------------------------------------
    def _copy(self, transfers: Iterable[KVTransfer], *, to_host: bool) -> int:
        src_ids: dict[str, list[int]] = defaultdict(list)
        dst_ids: dict[str, list[int]] = defaultdict(list)
        for t in transfers:
            if not t.block_ids:
                continue
            first_block = t.first_token // self._layouts[t.model].block_size
            host = self._host_blocks(t, first_block, len(t.block_ids), grow=to_host)
            device = list(t.block_ids)
            src_ids[t.model] += device if to_host else host
            dst_ids[t.model] += host if to_host else device
        for model, src in src_ids.items():
            self.copy_raw(model, src, dst_ids[model], to_host=to_host)
        return sum(len(s) for s in src_ids.values())

    def copy_raw(self, model: str, src_ids: list[int], dst_ids: list[int], *, to_host: bool) -> None:
        """Copy blocks `src_ids[i]` → `dst_ids[i]` of one model, device → host or host → device."""
        src_kv, dst_kv = self._device_views[model], self._host_views[model]
        if not to_host:
            src_kv, dst_kv = dst_kv, src_kv
        _copy_blocks(src_kv, dst_kv, src_ids, dst_ids, self.device)

    def _host_blocks(self, t: KVTransfer, first_block: int, count: int, *, grow: bool) -> list[int]:
        bs = self._layouts[t.model].block_size
        if grow:
            if not self.host_pool.allocate(t.model, t.seq_id, (first_block + count) * bs):
                raise RuntimeError(f"host KV buffer full: cannot place {count} blocks of sequence {t.seq_id}")
            self._host_model[t.seq_id] = t.model
        table = self.host_pool.block_table(t.seq_id)
        if len(table) < first_block + count:
            raise RuntimeError(f"sequence {t.seq_id} has {len(table)} host blocks, needs {first_block + count}")
        return list(table[first_block : first_block + count])


def _copy_blocks(src: tuple[torch.Tensor, torch.Tensor], dst: tuple[torch.Tensor, torch.Tensor], src_ids: list[int],
                 dst_ids: list[int], device: torch.device) -> None:
    # Imported here: the kernel module imports triton, which a CPU worker need not load until it copies KV.
    from workers.kernels.page_copy import copy_blocks, copy_blocks_ref

    if device.type == "cuda":
        ids = torch.tensor([src_ids, dst_ids], dtype=torch.int32).pin_memory().to(device, non_blocking=True)
        copy_blocks(src[0], dst[0], ids[0], ids[1])
    else:
        copy_blocks_ref(src[0], src[1], dst[0], dst[1], torch.tensor(src_ids), torch.tensor(dst_ids))
