"""The engine's torch path serves the same block tables as the kernels; it must equal the references."""

import numpy as np
import torch

from tests.workers.paged import paged_case
from workers.attention import AttentionBatch, TorchAttention, TritonAttention
from workers.kernels.decode_attention import paged_decode_attention_ref
from workers.kernels.prefill_attention import paged_prefill_attention_ref


def _batch(case, num_decode: int, q_lens: list[int]) -> AttentionBatch:
    lens = np.array([1] * num_decode + q_lens)
    return AttentionBatch(torch.device("cpu"), num_decode, np.full(int(lens.sum()), -1), case.block_tables.numpy(),
                          case.context_lens.numpy(), lens)


def _check(backend, group: int, seed: int) -> None:
    case = paged_case([9, 1, 23, 14, 30], seed=seed)
    q_lens = [14, 7]  # a whole prompt, and a chunk after a 23-token prefix
    batch = _batch(case, 3, q_lens)
    q = torch.randn(3 + sum(q_lens), 2 * group, 16, generator=torch.Generator().manual_seed(seed))
    kv = torch.zeros(q.shape[0], 2, 16)  # slots are all -1: nothing is written, the cache is read as is
    k_cache, v_cache = case.k[:, 1], case.v[:, 1]
    state = backend.prepare(batch, case.layout, case.k, case.v)
    out = backend.attend(state, 1, q, kv, kv)
    dec = paged_decode_attention_ref(q[:3], k_cache, v_cache, case.block_tables[:3], case.context_lens[:3])
    pre = paged_prefill_attention_ref(q[3:], k_cache, v_cache, torch.from_numpy(batch.prefill_cu_q_lens),
                                      case.block_tables[3:],
                                      case.context_lens[3:])
    torch.testing.assert_close(out, torch.cat([dec, pre]), atol=1e-5, rtol=1e-5)


def test_torch_path_matches_references_for_mixed_batches() -> None:
    for group in (1, 4, 8):
        _check(TorchAttention(), group, seed=20 + group)


def test_triton_backend_serves_the_same_batch() -> None:
    _check(TritonAttention(block_m=16, block_n=16), 4, seed=31)
