import pytest
import torch

from tests.workers.paged import paged_case, tolerance
from workers.kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref


def _cu(q_lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_prefill_over_cached_prefix_matches_reference(dtype: torch.dtype, group: int) -> None:
    contexts, q_lens = [6, 17, 3, 26], [6, 5, 1, 19]  # whole prompt, a chunk after a prefix, one token, a long one
    case = paged_case(contexts, dtype=dtype, seed=10 + group)
    q = torch.randn(sum(q_lens), 2 * group, 16, generator=torch.Generator().manual_seed(4)).to(dtype)
    args = (q, case.k[:, 0], case.v[:, 0], _cu(q_lens), case.block_tables, case.context_lens)
    out = paged_prefill_attention(*args, max_q_len=max(q_lens), block_m=16, block_n=16)
    torch.testing.assert_close(out, paged_prefill_attention_ref(*args), **tolerance(dtype))


def test_prefill_of_a_whole_prompt_is_causal_attention() -> None:
    case = paged_case([11], num_kv_heads=1, seed=5)
    q = torch.randn(11, 1, 16, generator=torch.Generator().manual_seed(5))
    out = paged_prefill_attention(q, case.k[:, 1], case.v[:, 1], _cu([11]), case.block_tables, case.context_lens,
                                  max_q_len=11, block_m=16, block_n=16)
    k = torch.cat([case.k[b // case.layout.blocks_per_page, 1, b % case.layout.blocks_per_page]
                   for b in case.block_tables[0].tolist()])[:11]
    v = torch.cat([case.v[b // case.layout.blocks_per_page, 1, b % case.layout.blocks_per_page]
                   for b in case.block_tables[0].tolist()])[:11]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
