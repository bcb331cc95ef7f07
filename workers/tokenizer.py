"""A byte-level tokenizer: the 256 byte values, then BOS, EOS and PAD (vocabulary 259, as the tiny catalog models).

It exists so that `/v1/completions` can take text for the tiny models without any external vocabulary; larger
models are served with token ids.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids 0–255; `bos_id`, `eos_id` and `pad_id` follow."""

    bos_id: int = 256
    eos_id: int = 257
    pad_id: int = 258

    @property
    def vocab_size(self) -> int:
        return 259

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        """Bytes back to text; special ids are dropped and broken UTF-8 sequences replaced (never raises)."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
