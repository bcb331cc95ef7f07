"""The compiled kernels on a GPU, at model shapes (Llama-3.1-8B attention: 32/8 heads, head_dim 128, bf16)."""

import pytest
import torch

from tests.workers.paged import tolerance
from workers.kernels.layout import PagedKVLayout, kv_views

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cache(contexts: list[int], dtype: torch.dtype = torch.bfloat16):
    layout = PagedKVLayout(2, 8, 128, 16, 2 * 1024 * 1024, dtype)
    buffer = torch.zeros(16 * layout.page_bytes, dtype=torch.uint8, device="cuda")
    k, v = kv_views(buffer, layout)
    k.normal_()
    v.normal_()
    width = max(-(-n // 16) for n in contexts)
    blocks = torch.randperm(16 * layout.blocks_per_page, device="cuda")[: width * len(contexts)]
    return k, v, blocks.view(len(contexts), width).int(), torch.tensor(contexts, dtype=torch.int32, device="cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_decode_and_prefill_match_references(dtype: torch.dtype) -> None:
    from workers.kernels.decode_attention import paged_decode_attention, paged_decode_attention_ref
    from workers.kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref

    contexts = [1, 17, 300, 2049]
    k, v, tables, lens = _cache(contexts, dtype)
    q = torch.randn(len(contexts), 32, 128, device="cuda", dtype=dtype)
    out = paged_decode_attention(q, k[:, 1], v[:, 1], tables, lens, max_context=max(contexts))
    torch.testing.assert_close(out, paged_decode_attention_ref(q, k[:, 1], v[:, 1], tables, lens), **tolerance(dtype))
    q_lens = [1, 17, 100, 513]
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    qp = torch.randn(sum(q_lens), 32, 128, device="cuda", dtype=dtype)
    args = (qp, k[:, 0], v[:, 0], cu, tables, lens)
    torch.testing.assert_close(paged_prefill_attention(*args, max_q_len=max(q_lens)),
                               paged_prefill_attention_ref(*args), **tolerance(dtype))


def test_decode_launch_is_cuda_graph_capturable() -> None:
    from workers.kernels.decode_attention import paged_decode_attention

    k, v, tables, lens = _cache([100, 2000, 700])
    q = torch.randn(3, 32, 128, device="cuda", dtype=torch.bfloat16)
    eager = paged_decode_attention(q, k[:, 0], v[:, 0], tables, lens, max_context=2048)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = paged_decode_attention(q, k[:, 0], v[:, 0], tables, lens, max_context=2048)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, atol=0, rtol=0)


def test_block_copy_to_pinned_host_memory_and_back() -> None:
    from workers.kernels.page_copy import copy_blocks

    k, v, tables, _ = _cache([64])
    layout = PagedKVLayout(2, 8, 128, 16, 2 * 1024 * 1024, torch.bfloat16)
    host = torch.zeros(2 * layout.page_bytes, dtype=torch.uint8).pin_memory()
    hk, hv = kv_views(host, layout)
    src = tables[0, :4]
    dst = torch.tensor([5, 0, 3, 1], dtype=torch.int32, device="cuda")
    copy_blocks(k, hk, src, dst)
    torch.cuda.synchronize()
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        ps, ss = divmod(s, layout.blocks_per_page)
        pd, sd = divmod(d, layout.blocks_per_page)
        assert torch.equal(hk[pd, :, sd].cuda(), k[ps, :, ss]) and torch.equal(hv[pd, :, sd].cuda(), v[ps, :, ss])
