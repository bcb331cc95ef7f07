import pytest

from core.catalog import GPU_CATALOG, MODEL_CATALOG, llama_param_count


def test_catalog_has_the_presets_the_fleet_spec_promises() -> None:
    assert {"A10", "L4", "A100-40GB", "A100-80GB", "H100-SXM", "H200"} <= set(GPU_CATALOG)
    assert {
        "Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B", "Llama-3.1-70B", "Mistral-7B", "Qwen2.5-7B",
        "Qwen2.5-14B", "Qwen2.5-32B",
    } <= set(MODEL_CATALOG)


@pytest.mark.parametrize("name", sorted(MODEL_CATALOG))
def test_parameter_count_matches_the_architecture(name: str) -> None:
    arch = MODEL_CATALOG[name]
    # Qwen2.5 adds QKV biases the Llama layout does not count: allow 1.5 %.
    assert llama_param_count(arch) == pytest.approx(arch.params_b * 1e9, rel=0.015)


def test_llama_8b_kv_bytes_per_token_is_128_kib() -> None:
    arch = MODEL_CATALOG["Llama-3.1-8B"]
    assert arch.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert arch.weight_bytes == pytest.approx(16.06e9)


def test_tp_degrees_must_split_heads() -> None:
    qwen7 = MODEL_CATALOG["Qwen2.5-7B"]  # 28 query heads, 4 KV heads
    assert qwen7.allowed_tp_degrees() == (1, 2, 4)
    assert not qwen7.tp_allowed(8)
    # More TP ranks than KV heads replicate the KV heads: per-GPU bytes stop shrinking.
    llama70 = MODEL_CATALOG["Llama-3.1-70B"]
    assert llama70.kv_bytes_per_token_per_gpu(8) == llama70.kv_bytes_per_token // 8
    assert llama70.kv_bytes_per_token_per_gpu(16) == llama70.kv_bytes_per_token_per_gpu(8)
