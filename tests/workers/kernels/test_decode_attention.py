import pytest
import torch

from tests.workers.paged import paged_case, tolerance
from workers.kernels.decode_attention import paged_decode_attention, paged_decode_attention_ref, plan_splits

# Ragged: one token, a block boundary, several pages, one longer than a split.
CONTEXTS = [1, 4, 13, 37]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_matches_reference_on_scattered_pages(dtype: torch.dtype, group: int) -> None:
    case = paged_case(CONTEXTS, dtype=dtype, seed=group)
    q = torch.randn(len(CONTEXTS), 2 * group, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    layer = 1
    out = paged_decode_attention(q, case.k[:, layer], case.v[:, layer], case.block_tables, case.context_lens,
                                 max_context=max(CONTEXTS), num_splits=3, block_n=16)
    ref = paged_decode_attention_ref(q, case.k[:, layer], case.v[:, layer], case.block_tables, case.context_lens)
    torch.testing.assert_close(out, ref, **tolerance(dtype))


def test_bf16_is_computed_in_fp32_under_the_interpreter() -> None:
    case = paged_case([9, 30], dtype=torch.bfloat16, num_kv_heads=1, head_dim=32, block_size=8, page_bytes=8192)
    q = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    out = paged_decode_attention(q, case.k[:, 0], case.v[:, 0], case.block_tables, case.context_lens,
                                 max_context=30, block_n=16)
    ref = paged_decode_attention_ref(q, case.k[:, 0], case.v[:, 0], case.block_tables, case.context_lens)
    torch.testing.assert_close(out, ref, **tolerance(torch.bfloat16))


def test_split_count_does_not_change_the_result_and_empty_splits_are_harmless() -> None:
    case = paged_case([5, 40], seed=3)
    q = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(3))
    kw = {"max_context": 40, "block_n": 16}
    one = paged_decode_attention(q, case.k[:, 0], case.v[:, 0], case.block_tables, case.context_lens,
                                 num_splits=1, **kw)
    # 3 splits of 16 tokens: the 5-token sequence leaves two splits empty.
    three = paged_decode_attention(q, case.k[:, 0], case.v[:, 0], case.block_tables, case.context_lens,
                                   num_splits=3, **kw)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=1e-5)


def test_split_plan_fills_the_gpu_only_when_the_batch_does_not() -> None:
    assert plan_splits(256, 8, 2048, 64, num_sms=132) == 1
    assert plan_splits(1, 8, 8192, 64, num_sms=132) == 33 - 1  # capped at 32
    assert plan_splits(4, 8, 100, 64, num_sms=132) == 2  # never more splits than tiles
