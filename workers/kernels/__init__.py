"""Triton kernels of the paged engine, one per file beside its plain-torch reference.

- `decode_attention`: paged decode attention — block tables, the query heads of one KV head packed into one
  `tl.dot` tile (GQA), the context split across programs (split-K) and merged by log-sum-exp.
- `prefill_attention`: paged causal attention of a new chunk over its cached prefix and itself.
- `kv_write`: scatter new K/V into pages by slot.
- `page_copy`: copy (block, layer) runs between two paged buffers (device ↔ host) for swap and checkpoint.

Every kernel takes every stride as an argument and keeps its tile sizes independent of page and block size (see
`layout.py`). On CUDA they are compiled; on CPU they run only under `TRITON_INTERPRET=1` (tests, tiny shapes), and
the engine serves the same block tables with `workers.attention.TorchAttention`. Triton reads TRITON_INTERPRET when
a kernel is decorated, i.e. when these modules are first imported: set it before that.

May import: core (and torch, triton).
"""
