"""Host memory for KV copied out of a device: swapped-out sequences and offline checkpoints (ConServe), held in
whole blocks of the model's layout. `KVPool` inherits this accounting (`workers.kv_pool`).

Pure Python (no torch): the simulator and the real engine share it.
"""

from __future__ import annotations

from workers.kv_pages import ModelPages


class HostKVAccounting:
    """Mixin of `KVPool`: per-sequence KV held in host memory, within `host_capacity_bytes`."""

    page_bytes: int

    def _init_host(self, host_capacity_bytes: int) -> None:
        self.host_capacity_bytes = host_capacity_bytes
        self._host: dict[int, tuple[str, int]] = {}  # seq id → (model, KV tokens held in host memory)
        self._host_bytes_used = 0

    def _state(self, model: str) -> ModelPages:
        raise NotImplementedError

    @property
    def host_bytes_used(self) -> int:
        return self._host_bytes_used

    @property
    def host_pages_used(self) -> int:
        """Host KV in units of device pages (what WorkerStatus reports)."""
        return -(-self._host_bytes_used // self.page_bytes)

    def host_tokens(self, seq_id: int) -> int:
        """KV tokens of the sequence held in host memory (swapped out or checkpointed)."""
        entry = self._host.get(seq_id)
        return entry[1] if entry else 0

    def can_store_host(self, model: str, seq_id: int, num_tokens: int) -> bool:
        """Could the sequence's host copy grow (or shrink) to `num_tokens` tokens?"""
        return self._host_bytes_used + self._host_delta(model, seq_id, num_tokens) <= self.host_capacity_bytes

    def store_host(self, model: str, seq_id: int, num_tokens: int) -> bool:
        """Set the sequence's host copy to `num_tokens` tokens. False (nothing changed) when host memory is full."""
        delta = self._host_delta(model, seq_id, num_tokens)
        if delta > 0 and self._host_bytes_used + delta > self.host_capacity_bytes:
            return False
        self._host_bytes_used += delta
        self._host[seq_id] = (model, num_tokens)
        return True

    def _host_delta(self, model: str, seq_id: int, num_tokens: int) -> int:
        """Bytes the host copy grows by (host copies are held in whole blocks)."""
        layout = self._state(model).layout
        bs = layout.block_size_tokens
        old = self._host.get(seq_id)
        old_blocks = -(-old[1] // bs) if old else 0
        new_blocks = -(-num_tokens // bs)
        return (new_blocks - old_blocks) * layout.block_bytes if new_blocks != old_blocks else 0

    def drop_host(self, seq_id: int) -> None:
        """Forget the sequence's host copy."""
        entry = self._host.pop(seq_id, None)
        if entry:
            self._host_bytes_used -= self._host_bytes(*entry)

    def _host_bytes(self, model: str, num_tokens: int) -> int:
        layout = self._state(model).layout
        return layout.num_blocks(num_tokens) * layout.block_bytes
