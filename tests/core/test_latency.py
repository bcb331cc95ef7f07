import pytest

from core.catalog import GPU_CATALOG, MODEL_CATALOG
from core.latency import LatencyBook, roofline


def test_roofline_decode_of_llama_8b_on_h100_is_weight_bound() -> None:
    lm = roofline(MODEL_CATALOG["Llama-3.1-8B"], GPU_CATALOG["H100-SXM"], 1)
    one = lm.decode_step_s(1, 1000)
    # 16 GB of weights at 80 % of 3.35 TB/s ≈ 6 ms, plus launch overhead.
    assert 0.005 < one < 0.010
    # Batching is nearly free at small batch, and grows with KV reads.
    assert lm.decode_step_s(32, 1000) < 2 * one
    assert lm.decode_step_s(32, 8000) > lm.decode_step_s(32, 1000)


def test_tensor_parallelism_speeds_up_a_70b_model() -> None:
    arch, gpu = MODEL_CATALOG["Llama-3.1-70B"], GPU_CATALOG["H100-SXM"]
    tp2, tp4 = roofline(arch, gpu, 2), roofline(arch, gpu, 4)
    assert tp4.decode_step_s(16, 2000) < tp2.decode_step_s(16, 2000)
    assert tp4.host_to_gpu_s == pytest.approx(tp2.host_to_gpu_s / 2)


def test_prefill_cost_grows_superlinearly_with_prompt_length() -> None:
    lm = roofline(MODEL_CATALOG["Llama-3.1-8B"], GPU_CATALOG["A100-80GB"], 1)
    assert lm.prefill_s(8000) > 8 * (lm.prefill_s(1000) - lm.c0_s)
    assert lm.iteration_s() == 0.0


def test_book_prefers_profiles_and_caches_presets() -> None:
    arch, gpu = MODEL_CATALOG["Llama-3.1-8B"], GPU_CATALOG["L4"]
    fitted = roofline(arch, gpu, 1).__class__(**{**roofline(arch, gpu, 1).__dict__, "c0_s": 0.5, "source": "profile:x"})
    book = LatencyBook(profiles={(arch.name, gpu.name, 1): fitted})
    assert book.get(arch, gpu, 1).source == "profile:x"
    assert book.get(arch, gpu, 2) is book.get(arch, gpu, 2)


def test_profiles_round_trip_through_yaml(tmp_path) -> None:
    from core.latency import FitError, load_profiles, save_profiles

    base = roofline(MODEL_CATALOG["Tiny-Llama-2L"], GPU_CATALOG["L4"], 1)
    fitted = base.__class__(**{**base.__dict__, "source": "profile:test", "fit_error": FitError(0.05, 0.09, 40)})
    save_profiles(tmp_path / "p.yaml", [fitted], meta={"device": "cpu"})
    loaded = load_profiles(tmp_path / "p.yaml")
    assert loaded[("Tiny-Llama-2L", "L4", 1)] == fitted


def test_bad_profile_file_is_an_input_error(tmp_path) -> None:
    from core.errors import InputError
    from core.latency import load_profiles

    (tmp_path / "p.yaml").write_text("kind: Fleet\n")
    with pytest.raises(InputError, match="LatencyProfiles"):
        load_profiles(tmp_path / "p.yaml")


def test_admission_defaults_to_zero_and_round_trips(tmp_path) -> None:
    import yaml

    from core.errors import InputError
    from core.latency import load_profiles, save_profiles

    base = roofline(MODEL_CATALOG["Tiny-Llama-2L"], GPU_CATALOG["L4"], 1)
    assert base.admit_s == 0.0  # presets: no intake cost, so their predictions are unchanged
    fitted = base.__class__(**{**base.__dict__, "source": "profile:test", "admit_s": 4e-4})
    save_profiles(tmp_path / "p.yaml", [fitted])
    assert load_profiles(tmp_path / "p.yaml")[("Tiny-Llama-2L", "L4", 1)].admit_s == 4e-4
    doc = yaml.safe_load((tmp_path / "p.yaml").read_text())
    del doc["profiles"][0]["admit_s"]  # a profile written before the field existed
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(doc))
    assert load_profiles(tmp_path / "old.yaml")[("Tiny-Llama-2L", "L4", 1)].admit_s == 0.0
    doc["profiles"][0]["admit_s"] = -0.001
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=r"profiles\[0\]\.admit_s: -0.001 is not allowed; a finite number"):
        load_profiles(tmp_path / "bad.yaml")


@pytest.mark.parametrize(("content", "text"), [(b"\xff\xfe\x00", "utf-8"), (b"kind: LatencyProfiles\nprofiles: 5\n",
                                                                            "a list of profiles")])
def test_unreadable_or_misshapen_profile_file_is_an_input_error(tmp_path, content: bytes, text: str) -> None:
    from core.errors import InputError
    from core.latency import load_profiles

    (tmp_path / "p.yaml").write_bytes(content)
    with pytest.raises(InputError, match=text):
        load_profiles(tmp_path / "p.yaml")
