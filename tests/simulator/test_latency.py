"""Latency presets against published measurements, fleet latency books, and per-replica derived numbers."""

from __future__ import annotations

import pytest

from core.catalog import GPU_CATALOG, MODEL_CATALOG
from core.errors import InputError
from core.latency import LatencyBook, roofline, save_profiles
from simulator.latency import PUBLISHED, build_latency_book, kv_layout, preemption_costs
from tests.simulator.conftest import small_fleet


@pytest.mark.parametrize("point", PUBLISHED, ids=lambda p: f"{p.arch}-{p.gpu_type}-tp{p.tp}-{p.metric}")
def test_roofline_presets_match_published_measurements(point) -> None:
    """Each published figure within its tolerance (the tolerances are justified in docs/latency.md)."""
    error = point.relative_error(LatencyBook())
    assert abs(error) <= point.tolerance, f"{point.source}: predicted {error:+.1%} off"


def test_the_published_decode_points_are_matched_closely_on_average() -> None:
    errors = [abs(p.relative_error()) for p in PUBLISHED if p.metric == "tpot_s"]
    assert sum(errors) / len(errors) < 0.06


def test_a_fleet_book_uses_fitted_profiles_over_presets(tmp_path) -> None:
    fleet = small_fleet()
    arch, gpu = MODEL_CATALOG["Llama-3.1-8B"], GPU_CATALOG["H100-SXM"]
    base = roofline(arch, gpu, 1)
    fitted = base.__class__(**{**base.__dict__, "c0_s": 0.02, "source": "profile:h100"})
    save_profiles(tmp_path / "p.yaml", [fitted])
    book = build_latency_book(fleet, [tmp_path / "p.yaml"])
    assert book.get(arch, gpu, 1).c0_s == 0.02 and book.get(arch, gpu, 2).source == "roofline"
    other = roofline(MODEL_CATALOG["Llama-3.2-1B"], GPU_CATALOG["L4"], 1)
    save_profiles(tmp_path / "q.yaml", [other])
    with pytest.raises(InputError, match="Llama-3.2-1B on L4"):
        build_latency_book(fleet, [tmp_path / "q.yaml"])


def test_swap_is_preferred_for_long_contexts_where_recompute_is_quadratic() -> None:
    lm = roofline(MODEL_CATALOG["Llama-3.1-8B"], GPU_CATALOG["H100-SXM"], 1)
    costs = preemption_costs(lm)
    # 128 KiB per token over ~51 GB/s is 2.6 µs one way; prefill is ~27 µs per token plus attention.
    assert costs.swap_s_per_token == pytest.approx(131072 / 51.2e9)
    assert costs.prefer_swap(4000)


def test_kv_layout_fits_blocks_to_pages() -> None:
    layout = kv_layout(MODEL_CATALOG["Llama-3.1-8B"], 1, page_bytes=32 << 20, max_block_tokens=256)
    assert layout.bytes_per_token == 131072 and layout.block_size_tokens == 256 and layout.num_layers == 32
    assert kv_layout(MODEL_CATALOG["Llama-3.1-70B"], 4).block_size_tokens == 8


def test_offline_checkpoint_copies_hide_under_compute_for_every_preset() -> None:
    """The simulator charges no time for offline KV checkpoints: as in ConServe, each iteration's new KV is copied
    to host while the GPU computes, so an iteration lasts max(compute, copy) — and for every catalog preset the copy
    of a whole batch's new KV (256 decodes at the smallest context, or an 8192-token prefill chunk) takes under a
    third of the compute. If a preset ever broke this, checkpoints would have to be charged (docs/simulator.md)."""
    book = LatencyBook()
    for gpu in GPU_CATALOG.values():
        for arch in MODEL_CATALOG.values():
            for tp in (t for t in (1, 2, 4, 8) if arch.tp_allowed(t)):
                lm = book.get(arch, gpu, tp)
                per_token_s = lm.kv_bytes_per_token / tp / lm.kv_swap_bytes_per_s
                decode = lm.iteration_s(decode_seqs=256, kv_tokens=256)
                prefill = lm.iteration_s(prefill_tokens=8192, prefill_attn=8192 * 8193 / 2)
                assert 256 * per_token_s < decode / 3 and 8192 * per_token_s < prefill / 3, (arch.name, gpu.name, tp)
