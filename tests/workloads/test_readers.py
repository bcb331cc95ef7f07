"""Azure, Mooncake and canonical readers: real traces, round trips, and one clear error per kind of bad row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from core.requests import RequestTable
from tests.workloads.helpers import AZURE_CONV, need, write
from workloads.azure import read_azure
from workloads.canonical import read_canonical, write_canonical
from workloads.formats import detect_format, read_trace
from workloads.mooncake import read_mooncake
from workloads.tabular import TraceOrderWarning

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def test_azure_conv_trace_has_19366_requests_over_58_minutes() -> None:
    table = read_azure(need(AZURE_CONV))
    assert len(table) == 19_366
    assert table.duration_s / 60 == pytest.approx(58.36, abs=0.01)
    assert table.arrival_s[0] == 0.0 and np.all(np.diff(table.arrival_s) >= 0)
    assert table.model_names == ("azure",) and table.slo_names == ("default",)
    assert table.prompt_tokens.mean() == pytest.approx(1154.7, abs=0.1)


def test_azure_parses_sub_second_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", AZURE_HEADER + "2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:47.1805900,396,109\n2023-11-16 18:15:48,10,1\n")
    table = read_azure(path, model="chat", slo_class="interactive")
    np.testing.assert_allclose(table.arrival_s, [0.0, 0.5, 1.31941], atol=1e-6)
    assert table.request(1).prompt_tokens == 396 and table.request(1).model == "chat"


def test_out_of_order_rows_are_sorted_with_one_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", AZURE_HEADER + "2023-11-16 18:00:02,1,1\n2023-11-16 18:00:01,2,2\n"
                 "2023-11-16 18:00:03,3,3\n2023-11-16 18:00:00,4,4\n")
    with pytest.warns(TraceOrderWarning, match="2 of 4 rows arrive earlier"):
        table = read_azure(path)
    assert list(table.prompt_tokens) == [4, 2, 1, 3]
    assert list(table.arrival_s) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("rows", "line", "text"),
    [
        ("2023-11-16 18:00:00,1,1\n2023-11-16 18:00:01,5,-3\n", 3, "-3"),  # negative tokens
        ("2023-11-16 18:00:00,1,1\n2023-11-16 18:00:01,abc,3\n", 3, "abc"),  # not a number
        ("2023-11-16 18:00:00,1,1\n2023-11-16 18:00:01,2.5,3\n", 3, "2.5"),  # fractional tokens
        ("2023-11-16 18:00:00,1,1\nnot-a-time,1,3\n", 3, "not-a-time"),  # bad timestamp
        ("2023-11-16 18:00:00,1,1\n,1,3\n", 3, "empty"),  # missing timestamp (NaN)
        ("2023-11-16 18:00:00,1,1\n2023-11-16 18:00:01,1,3,9\n", 3, "fields"),  # extra field
        ("2023-11-16 18:00:00,1,1\n2023-11-16 18:00:01,1\n", 3, "empty"),  # missing field
        ("2023-11-16 18:00:00,1,1\n\n2023-11-16 18:00:01,1,1\n", 3, "empty"),  # blank line inside
    ],
)
def test_azure_bad_row_names_file_line_and_value(tmp_path: Path, rows: str, line: int, text: str) -> None:
    path = write(tmp_path / "bad.csv", AZURE_HEADER + rows)
    with pytest.raises(InputError) as info:
        read_azure(path)
    message = str(info.value)
    assert f"bad.csv:{line}" in message and text in message and "\n" not in message
    assert "np." not in message  # the value as written, not a numpy repr


def test_trailing_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", AZURE_HEADER + "2023-11-16 18:00:00,1,1\n\n\n")
    assert len(read_azure(path)) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "no header"), (AZURE_HEADER, "no rows"), ("TIMESTAMP,ContextTokens\n2023-11-16 18:00:00,1\n", "columns")],
)
def test_empty_or_headless_files_fail_clearly(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        read_azure(write(tmp_path / "e.csv", text))


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.csv"):
        read_azure(tmp_path / "nope.csv")


def test_mooncake_reads_ms_timestamps_and_ignores_hash_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", '{"timestamp": 1000, "input_length": 10, "output_length": 5, "hash_ids": [1]}\n'
                 '{"timestamp": 3500, "input_length": 11, "output_length": 6, "hash_ids": [1, 2]}\n')
    table = read_mooncake(path, model="kimi")
    np.testing.assert_allclose(table.arrival_s, [0.0, 2.5])
    assert list(table.output_tokens) == [5, 6] and table.model_names == ("kimi",)


@pytest.mark.parametrize(
    ("lines", "line", "text"),
    [
        (['{"timestamp": 0, "input_length": 1, "output_length": 1}', '{"timestamp": 5, "input_length": 1,'], 2, "JSON"),
        (['{"timestamp": 0, "input_length": 1, "output_length": 1}', "", '{"timestamp": 5, "input_length": 1}'],
         3, "output_length"),
        (['{"timestamp": 0, "input_length": 1, "output_length": 1}', "", "",
          '{"timestamp": 5, "input_length": 1, "output_length": -2}'], 4, "-2"),
        (['{"timestamp": 0, "input_length": 1, "output_length": 1}', "[1, 2]"], 2, "object"),
    ],
)
def test_mooncake_bad_line_names_file_and_line(tmp_path: Path, lines: list[str], line: int, text: str) -> None:
    path = write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        read_mooncake(path)
    assert f"bad.jsonl:{line}" in str(info.value) and text in str(info.value)


def test_mooncake_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no rows"):
        read_mooncake(write(tmp_path / "e.jsonl", ""))


def _table() -> RequestTable:
    rng = np.random.default_rng(3)
    n = 500
    return RequestTable.from_columns(
        arrival_s=np.cumsum(rng.exponential(0.3, n)), model_idx=rng.integers(0, 3, n), slo_idx=rng.integers(0, 2, n),
        prompt_tokens=rng.integers(1, 4000, n), output_tokens=rng.integers(1, 900, n),
        model_names=("a", "b", "c"), slo_names=("interactive", "batch"),
    )


def test_canonical_round_trip(tmp_path: Path) -> None:
    table = _table()
    write_canonical(table, tmp_path / "t.csv")
    back = read_canonical(tmp_path / "t.csv")
    np.testing.assert_allclose(back.arrival_s, table.arrival_s, atol=1e-6)
    names = lambda t: np.asarray(t.model_names)[t.model_idx]
    classes = lambda t: np.asarray(t.slo_names)[t.slo_idx]
    assert (names(back) == names(table)).all() and (classes(back) == classes(table)).all()
    assert (back.prompt_tokens == table.prompt_tokens).all() and (back.output_tokens == table.output_tokens).all()
    assert detect_format(tmp_path / "t.csv") == "canonical"


def test_canonical_accepts_any_column_order(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "model,arrival_s,output_tokens,slo_class,prompt_tokens\nm,1.5,3,gold,7\n")
    r = read_canonical(path).request(0)
    assert (r.model, r.arrival_s, r.slo_class, r.prompt_tokens, r.output_tokens) == ("m", 1.5, "gold", 7, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("arrival_s,model,slo_class,prompt_tokens\n0,m,c,1\n", "arrival_s,model,slo_class,prompt_tokens,output_tokens"),
        ("arrival_s,model,slo_class,prompt_tokens,output_tokens,extra\n0,m,c,1,1,x\n", "do not match"),
        ("arrival_s,model,slo_class,prompt_tokens,output_tokens\n0,m,c,1,1\n1,,c,1,1\n", "c.csv:3"),
        ("arrival_s,model,slo_class,prompt_tokens,output_tokens\n0,m,c,1,1\nNaN,m,c,1,1\n", "c.csv:3"),
        ("arrival_s,model,slo_class,prompt_tokens,output_tokens\n0,m,c,0,1\n", "c.csv:2"),
        # more than int32 holds: must not wrap around to a negative count
        ("arrival_s,model,slo_class,prompt_tokens,output_tokens\n0,m,c,99999999999999999999,1\n",
         "c.csv:2: prompt_tokens: 99999999999999999999 is not allowed"),
        # replayed, requests at -100 s and -50 s had TTFTs of 98 s and 50 s that no fleet caused
        ("arrival_s,model,slo_class,prompt_tokens,output_tokens\n0,m,c,1,1\n-5,m,c,1,1\n",
         "c.csv:3: arrival_s: -5 is not allowed; arrival_s must be a time in seconds ≥ 0"),
    ],
)
def test_canonical_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected.replace(".", r"\.")):
        read_canonical(write(tmp_path / "c.csv", text))


def test_detect_and_read_any_trace(tmp_path: Path) -> None:
    azure = write(tmp_path / "a.csv", AZURE_HEADER + "2023-11-16 18:00:00,1,1\n")
    moon = write(tmp_path / "m.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n')
    assert (detect_format(azure), detect_format(moon)) == ("azure", "mooncake")
    assert read_trace(azure, model="x").model_names == ("x",)
    assert read_trace(moon).model_names == ("mooncake",)
    with pytest.raises(InputError, match="unknown trace format"):
        detect_format(write(tmp_path / "o.csv", "a,b\n1,2\n"))
    with pytest.raises(InputError, match="no such file"):
        detect_format(tmp_path / "missing.csv")


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    dest = write(tmp_path / "t.csv", "old contents\n")

    def write_half_then_fail(self: pd.DataFrame, path: Path, **_: object) -> None:
        Path(path).write_text("arrival_s,model,slo_class,prompt_tokens,output_tokens\n0.1,a,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_canonical(_table(), dest)
    assert dest.read_text() == "old contents\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
