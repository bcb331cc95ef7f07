"""KVPool: pages shared by models, block tables, page-aware allocation, limits with revisions, host accounting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.catalog import MODEL_CATALOG
from core.errors import InputError
from workers.kv_pool import DEFAULT_PAGE_BYTES, KVLayout, KVPool, fit_block_size, limit_pages, pages_for_bytes

PAGE = 4096
# 64 bytes/token, 16-token blocks: 1 KiB blocks, 4 blocks per 4 KiB page.
SMALL = KVLayout(bytes_per_token=64, block_size_tokens=16, num_layers=2)
# 256 bytes/token, 16-token blocks: one 4 KiB block per page.
BIG = KVLayout(bytes_per_token=256, block_size_tokens=16, num_layers=4)


def pool(num_pages: int = 8, host: int = 0) -> KVPool:
    p = KVPool(num_pages, page_bytes=PAGE, host_capacity_bytes=host)
    p.add_model("a", SMALL)
    p.add_model("b", BIG)
    return p


def test_block_sizes_fill_pages_for_catalog_models() -> None:
    llama8b = MODEL_CATALOG["Llama-3.1-8B"]
    assert fit_block_size(llama8b.kv_bytes_per_token_per_gpu(1)) == 16  # 128 KiB/token: one block per 2 MiB
    assert fit_block_size(MODEL_CATALOG["Llama-3.1-70B"].kv_bytes_per_token_per_gpu(4)) == 8  # 3 blocks, 24 tokens
    with pytest.raises(InputError, match="page_bytes"):
        fit_block_size(4 * DEFAULT_PAGE_BYTES)


def test_each_layer_is_dense_within_a_page() -> None:
    # Page of SMALL: 2 layer segments of 4 blocks × 512 bytes; block slot 1 of layer 1 in page 3.
    assert SMALL.layer_block_bytes == 512
    assert SMALL.block_offset_bytes(PAGE, page_id=3, slot=1, layer=1) == 3 * PAGE + 4 * 512 + 512
    assert SMALL.block_offset_bytes(PAGE, 0, 3, 0) + 512 == SMALL.block_offset_bytes(PAGE, 0, 0, 1)


def test_pages_are_taken_on_demand_and_returned_when_free() -> None:
    p = pool()
    assert p.allocate("a", 1, 40)  # 3 blocks of 16 tokens → one page (4 slots)
    assert p.block_table(1) == [0, 1, 2] and p.pages_used("a") == 1
    assert p.allocate("a", 1, 65)  # 5 blocks → a second page
    assert p.pages_used("a") == 2 and p.num_free_pages == 6
    assert [p.locate("a", b) for b in p.block_table(1)] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert p.free(1) == 5
    assert p.pages_used("a") == 0 and p.num_free_pages == 8 and p.block_table(1) == []
    p.check_invariants()


def test_a_page_holds_blocks_of_one_model_only() -> None:
    p = pool()
    p.allocate("a", 1, 16)
    p.allocate("b", 2, 16)
    p.allocate("a", 3, 16)
    pages_a, pages_b = set(p.page_ids("a")), set(p.page_ids("b"))
    assert pages_a == {0} and pages_b == {1} and not pages_a & pages_b
    p.check_invariants()


def test_allocation_fills_the_fullest_page_first_so_pages_empty_out() -> None:
    p = pool()
    p.allocate("a", 1, 16 * 4)  # page 0 full
    p.allocate("a", 2, 16 * 3)  # page 1: 3 of 4
    p.allocate("a", 3, 16 * 2)  # page 1's last slot, then page 2
    p.free(1)  # page 0 back to the pool
    assert p.page_ids("a") == (1, 2)
    p.allocate("a", 4, 16)  # goes to page 2 (the only partial page), no new page
    assert p.page_ids("a") == (1, 2)
    p.free(2)
    p.free(3)
    p.free(4)
    assert p.pages_used("a") == 0
    p.check_invariants()


def test_allocation_is_all_or_nothing_and_never_exceeds_capacity() -> None:
    p = pool(num_pages=2)
    assert p.allocate("b", 1, 32)  # 2 blocks = 2 pages: the pool is full
    assert not p.can_allocate("a", 1)
    assert not p.allocate("a", 2, 16)
    assert p.block_table(2) == [] and p.pages_used("a") == 0
    assert not p.allocate("b", 1, 33)
    assert len(p.block_table(1)) == 2
    p.check_invariants()


def test_limit_changes_follow_the_revision_contract() -> None:
    p = pool()
    p.allocate("a", 1, 16 * 8)  # 2 pages
    assert p.set_limit("a", 4, revision=1).status == "applied"
    assert p.set_limit("a", 4, revision=1).status == "applied"  # same revision, same arguments: idempotent
    assert p.set_limit("a", 3, revision=1).status == "conflict"
    assert p.set_limit("a", 8, revision=0).status == "stale"
    change = p.set_limit("a", 1, revision=2)  # below the 2 pages in use
    assert change.status == "deferred" and p.limit_pending("a")
    assert not p.allocate("a", 2, 16)  # no new page while the shrink is pending
    p.free(1)
    assert not p.limit_pending("a") and p.limit_pages("a") == 1 and p.limit_revision("a") == 2
    assert p.allocate("a", 2, 64) and not p.allocate("a", 3, 16)  # one page holds 4 blocks, no more
    with pytest.raises(InputError, match="limit_pages"):
        p.set_limit("a", -1, revision=3)


def test_device_capacity_shrinks_only_into_free_pages() -> None:
    p = pool(num_pages=4)
    p.allocate("b", 1, 48)  # 3 pages
    assert not p.set_num_pages(2)
    assert p.num_pages == 4
    assert p.set_num_pages(3) and p.num_free_pages == 0
    assert p.set_num_pages(6) and p.allocate("b", 2, 48)
    p.check_invariants()


def test_host_memory_accounts_swapped_and_checkpointed_kv() -> None:
    p = pool(host=3 * 1024)  # three SMALL blocks
    assert p.store_host("a", 1, 20)  # 2 blocks
    assert p.host_tokens(1) == 20 and p.host_bytes_used == 2048 and p.host_pages_used == 1
    assert not p.store_host("a", 2, 40)  # 3 more blocks do not fit
    assert p.store_host("a", 1, 48)  # grows to 3 blocks
    p.drop_host(1)
    assert p.host_bytes_used == 0 and p.host_tokens(1) == 0


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(InputError, match="num_pages"):
        KVPool(-1)
    with pytest.raises(InputError, match="block_size_tokens"):
        KVPool(4, page_bytes=PAGE).add_model("x", KVLayout(bytes_per_token=1024, block_size_tokens=16))
    with pytest.raises(InputError, match="model"):
        pool().allocate("nope", 1, 16)
    with pytest.raises(InputError, match="num_layers"):
        KVLayout(bytes_per_token=100, num_layers=3)


def test_removing_a_model_needs_its_blocks_freed() -> None:
    p = pool()
    p.allocate("a", 1, 16)
    with pytest.raises(RuntimeError, match="still holds"):
        p.remove_model("a")
    p.free(1)
    p.remove_model("a")
    assert p.models == ("b",)
    assert pages_for_bytes(5 * DEFAULT_PAGE_BYTES + 1) == 5
    assert limit_pages(5 * DEFAULT_PAGE_BYTES + 1) == 5 and limit_pages(1024) == 1 and limit_pages(0) == 0


ops = st.lists(
    st.tuples(st.sampled_from(["alloc", "free", "limit"]), st.sampled_from(["a", "b"]), st.integers(0, 7),
              st.integers(0, 200)),
    max_size=80,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops)
def test_random_operations_keep_every_invariant(operations: list[tuple[str, str, int, int]]) -> None:
    p = pool(num_pages=6)
    owner: dict[int, str] = {}
    revision = 0
    for op, model, seq, amount in operations:
        seq_id = seq if owner.get(seq, model) == model else seq + 100
        if op == "alloc":
            before, model_before = p.num_used_pages, p.pages_used(model)
            ok = p.allocate(model, seq_id, amount)
            if ok:
                owner[seq_id] = model
                limit = p.limit_pages(model)
                grew = p.pages_used(model) > model_before
                assert not grew or limit is None or p.pages_used(model) <= limit  # limits respected
            else:
                assert p.num_used_pages == before  # all or nothing
        elif op == "free":
            p.free(seq_id)
            owner.pop(seq_id, None)
        else:
            revision += 1
            limit = amount % 5
            change = p.set_limit(model, limit, revision)
            assert change.status in ("applied", "deferred")
            assert (change.status == "deferred") == (p.pages_used(model) > limit)
        p.check_invariants()  # capacity, one model per page, empty pages returned
    for seq_id in list(owner):
        p.free(seq_id)
    assert p.num_used_pages == 0 and p.num_free_pages == 6


def test_a_tensor_parallel_model_takes_a_page_in_each_mirror_per_page() -> None:
    leader, member = KVPool(4, page_bytes=PAGE), KVPool(3, page_bytes=PAGE)
    member.add_model("own", BIG)
    leader.add_model("tp", SMALL, mirrors=(member,))
    assert leader.allocate("tp", 1, 40)  # 3 blocks: one page here, one mirrored there
    assert member.num_used_pages == member.num_mirrored_pages == 1 and member.num_free_pages == 2
    assert member.allocate("own", 7, 32)  # the member's own model shares what is left
    assert leader.max_pages("tp") == 3  # bounded by the smaller pool
    assert not leader.can_allocate("tp", 4 * 2 + 1) and leader.mirrors_short("tp", 4 * 2 + 1)
    assert not leader.allocate("tp", 2, 16 * 6)  # a second page here, but none left there
    assert leader.num_used_pages == 1
    member.free(7)
    assert leader.allocate("tp", 2, 16 * 6) and member.num_mirrored_pages == 3
    leader.check_invariants()
    member.check_invariants()
    assert not member.set_num_pages(2)  # mirrored pages count as used
    leader.free(1)
    leader.free(2)
    assert member.num_used_pages == 0
    leader.remove_model("tp")
    member.check_invariants()
    with pytest.raises(InputError, match="mirrors"):
        leader.add_model("tp", SMALL, mirrors=(KVPool(4, page_bytes=2 * PAGE),))
