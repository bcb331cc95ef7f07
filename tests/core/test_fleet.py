import re
from pathlib import Path

import pytest

from core.errors import InputError, NotFoundError
from core.fleet import load_fleet
from tests.factories import EXAMPLES, fleet_dict, make_fleet, write_fleet


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_fleet_loads(path: Path) -> None:
    fleet = load_fleet(path)
    assert fleet.num_gpus > 0 and fleet.models


def test_examples_cover_small_longtail_and_spot() -> None:
    fleets = [load_fleet(p) for p in EXAMPLES.glob("*.yaml")]
    assert any("small" in f.name for f in fleets)
    assert any(len(f.models) >= 24 and all(p.gpu.name == "H100-SXM" for p in f.pools) for f in fleets)
    assert any(any(p.spot for p in f.pools) for f in fleets)


def test_templates_expand_into_named_models() -> None:
    fleet = make_fleet(models=[{"name": "tail-{i:02d}", "arch": "Llama-3.2-1B", "copies": 3}])
    assert fleet.model_names == ["tail-00", "tail-01", "tail-02"]
    assert fleet.model("tail-02").arch.name == "Llama-3.2-1B"
    with pytest.raises(NotFoundError, match="tail-07"):
        fleet.model("tail-07")


def test_fit_reports_kv_room_and_refuses_what_does_not_fit() -> None:
    fleet = make_fleet(pools=[{"name": "l4", "gpu": "L4", "count": 2, "gpus_per_node": 2}],
                       models=[{"name": "big", "arch": "Qwen2.5-14B", "tp_options": [1, 2]}])
    rows = {r.tp: r for r in fleet.fit_table()}
    assert not rows[1].fits and "weights need" in rows[1].reason
    assert rows[2].fits and rows[2].kv_capacity_tokens >= 32768


def _error(tmp_path: Path, data: dict) -> str:
    with pytest.raises(InputError) as info:
        load_fleet(write_fleet(tmp_path / "fleet.yaml", data))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_negative_count_names_path_value_and_bound(tmp_path: Path) -> None:
    data = fleet_dict()
    data["spec"]["pools"][0]["count"] = -1
    msg = _error(tmp_path, data)
    assert "fleet.yaml:" in msg and "spec.pools[0].count" in msg and "-1" in msg and "≥ 0" in msg


def test_unknown_field_lists_the_allowed_ones(tmp_path: Path) -> None:
    data = fleet_dict()
    data["spec"]["pools"][0]["gpus"] = data["spec"]["pools"][0].pop("count")
    msg = _error(tmp_path, data)
    assert "spec.pools[0].gpus" in msg and "allowed fields here: name, gpu, count" in msg


def test_unknown_catalog_name_lists_the_catalog(tmp_path: Path) -> None:
    data = fleet_dict()
    data["spec"]["models"][0]["arch"] = "Llama-9-400B"
    msg = _error(tmp_path, data)
    assert "spec.models[0].arch" in msg and "'Llama-9-400B'" in msg and "Llama-3.1-8B" in msg


def test_tp_that_does_not_divide_heads_is_rejected(tmp_path: Path) -> None:
    data = fleet_dict()
    data["spec"]["models"][0] = {"name": "q", "arch": "Qwen2.5-7B", "tp_options": [1, 8]}
    msg = _error(tmp_path, data)
    assert "spec.models[0].tp_options" in msg and "8" in msg and "[1, 2, 4]" in msg


def test_unknown_slo_class_in_mix_is_rejected(tmp_path: Path) -> None:
    data = fleet_dict(workload={"default_slo_mix": {"premium": 1.0}})
    msg = _error(tmp_path, data)
    assert "spec.workload.default_slo_mix" in msg and "premium" in msg and "interactive" in msg


def test_online_class_needs_both_targets(tmp_path: Path) -> None:
    data = fleet_dict()
    data["spec"]["slo_classes"][0].pop("tpot_s")
    assert "ttft_s and tpot_s" in _error(tmp_path, data)


def test_bad_yaml_and_wrong_document_kind(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text("spec: [unclosed\n")
    with pytest.raises(InputError, match="valid YAML"):
        load_fleet(tmp_path / "fleet.yaml")
    data = fleet_dict()
    data["kind"] = "Deployment"
    assert "must be 'Fleet'" in _error(tmp_path, data)


def test_slo_attainment_needs_both_targets() -> None:
    cls = make_fleet().slo_class("interactive")
    assert cls.attained(0.5, 0.05)
    assert not cls.attained(1.5, 0.05) and not cls.attained(0.5, 0.2)
    assert make_fleet().slo_class("batch").attained(100.0, 10.0)


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("spec.slo_classes[0].ttft_s", lambda s: s["slo_classes"][0].update(ttft_s=float("inf"))),
        ("spec.memory.reserve_gib", lambda s: s.update(memory={"reserve_gib": float("inf")})),
        ("spec.pools[0].price_per_hour", lambda s: s["pools"][0].update(price_per_hour=float("inf"))),
        ("spec.pools[0].gpu.memory_gib", lambda s: s["pools"][0].update(gpu={
            "name": "X", "memory_gib": float("inf"), "hbm_gbps": 1, "peak_tflops": 1, "pcie_gbps": 1,
            "price_per_hour": 1})),
    ],
)
def test_infinite_numbers_are_rejected(tmp_path: Path, where: str, edit) -> None:
    data = fleet_dict()
    edit(data["spec"])
    msg = _error(tmp_path, data)
    assert where in msg and "inf" in msg and "finite" in msg


def test_absurd_pool_size_is_rejected(tmp_path: Path) -> None:
    data = fleet_dict()
    data["spec"]["pools"][0]["count"] = 10**11
    msg = _error(tmp_path, data)
    assert "spec.pools[0].count" in msg and "100000000000" in msg and "≤ 100000" in msg


def test_a_file_that_is_not_utf8_text_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InputError, match=r"fleet\.yaml.*not UTF-8"):
        load_fleet(tmp_path / "fleet.yaml")


@pytest.mark.parametrize(("text", "says"), [
    ("a: &a [*a]\n", "alias *a is inside &a"),  # PyYAML would recurse without end
    ("x: " + "[" * 40 + "]" * 40 + "\n", "nesting 33 levels deep"),
    # aliases of aliases: 17 lines that stand for 10^16 values
    ("a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
     + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 16)), "aliases expanded"),
])
def test_yaml_that_would_recurse_or_expand_without_bound_is_refused_by_line(tmp_path: Path, text: str,
                                                                            says: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(says)) as info:
        load_fleet(path)
    assert "bomb.yaml" in str(info.value) and "line " in str(info.value)
