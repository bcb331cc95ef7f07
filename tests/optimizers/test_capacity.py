import pytest

from core.catalog import GPU_CATALOG, MODEL_CATALOG
from core.latency import roofline
from optimizers.capacity import (
    EngineLimits,
    LoadShape,
    SLOTarget,
    capacity_table,
    max_rate_per_s,
    ttft_quantile_s,
    work_per_request_s,
)

ARCH, GPU = MODEL_CATALOG["Llama-3.1-8B"], GPU_CATALOG["H100-SXM"]
LAT = roofline(ARCH, GPU, 1)
LOAD = LoadShape(1024, 256)
SLO = SLOTarget(ttft_s=1.0, tpot_s=0.1)
PER_TOKEN = ARCH.kv_bytes_per_token_per_gpu(1)


def test_rate_is_the_edge_of_feasibility() -> None:
    kv_tokens = 40 * 2**30 / PER_TOKEN
    rate = max_rate_per_s(LAT, LOAD, kv_tokens, SLO)
    assert 1 < rate < 50
    # At the rate every constraint holds; 1 % above, one is violated (utilisation, the TPOT target, KV or TTFT).
    tau = LAT.c0_s / (1 - rate * work_per_request_s(LAT, LOAD))
    assert tau <= 0.9 * SLO.tpot_s + 1e-6
    assert ttft_quantile_s(rate, LAT, LOAD, 0.99) <= SLO.ttft_s + 1e-6
    over = rate * 1.01
    tau_over = LAT.c0_s / (1 - over * work_per_request_s(LAT, LOAD))
    batch = over * LOAD.mean_output_tokens * tau_over
    limits = EngineLimits()
    assert rate * work_per_request_s(LAT, LOAD) <= limits.max_utilization + 1e-6
    assert (over * work_per_request_s(LAT, LOAD) > limits.max_utilization
            or tau_over > 0.9 * SLO.tpot_s or ttft_quantile_s(over, LAT, LOAD, 0.99) > SLO.ttft_s
            or (batch + limits.batch_z * batch**0.5) * LOAD.mean_context_tokens > 0.85 * kv_tokens or batch > 256)


def test_time_shared_replicas_hold_kv_for_the_tpot_target_and_so_serve_less_per_gib() -> None:
    from dataclasses import replace

    small_kv = 4 * 2**30 / PER_TOKEN
    alone = max_rate_per_s(LAT, LOAD, small_kv, SLO)
    shared = max_rate_per_s(LAT, LOAD, small_kv, SLO, replace(EngineLimits(), time_shared=True))
    assert 0 < shared < alone
    # Little's law at the TPOT target: the resident batch (with its Poisson margin) fills the KV share.
    resident = shared * LOAD.mean_output_tokens * 0.9 * SLO.tpot_s
    assert (resident + 2.33 * resident**0.5) * LOAD.mean_context_tokens == pytest.approx(0.85 * small_kv, rel=1e-3)


def test_capacity_grows_with_kv_and_shrinks_with_tighter_slos() -> None:
    loose = capacity_table(LAT, LOAD, PER_TOKEN, 1.0, 50.0, SLO)
    tight = capacity_table(LAT, LOAD, PER_TOKEN, 1.0, 50.0, SLOTarget(ttft_s=0.3, tpot_s=0.02))
    assert list(loose.rate_per_s) == sorted(loose.rate_per_s)
    assert loose.rate_at(2.0) < loose.rate_at(20.0)
    assert tight.max_rate_per_s < loose.max_rate_per_s
    offline = capacity_table(LAT, LOAD, PER_TOKEN, 1.0, 50.0, None)
    assert offline.max_rate_per_s >= loose.max_rate_per_s


def test_segments_are_a_concave_envelope_that_never_undercuts_the_table() -> None:
    table = capacity_table(LAT, LOAD, PER_TOKEN, 1.0, 50.0, SLO)
    segs = table.segments
    slopes = [b for _, b in segs]
    assert slopes == sorted(slopes, reverse=True)  # concave
    for kv, rate in zip(table.kv_gib, table.rate_per_s):
        assert min(a + b * kv for a, b in segs) == pytest.approx(rate, rel=1e-6, abs=1e-6)
    assert table.kv_needed_gib(table.rate_at(10.0)) == pytest.approx(10.0, rel=1e-3)


def test_a_share_too_small_for_any_sequence_has_no_capacity() -> None:
    assert max_rate_per_s(LAT, LOAD, 0.0, SLO) == 0.0
    assert max_rate_per_s(LAT, LOAD, 100.0, SLO) == 0.0
