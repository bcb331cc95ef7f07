"""Availability trace readers (Parcae, SpotServe, SkyPilot) and the AvailabilityTrace queries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from tests.factories import SHARED_TRACES
from workloads.availability import AvailabilityTrace, is_availability_trace, read_availability


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_event_csv(tmp_path: Path) -> None:
    p = write(tmp_path / "p3.csv", "0,add,node1\n0,add,node2\n60000,add,node3\n120000,remove,node1\n")
    t = read_availability(p)
    assert t.name == "p3" and t.num_events == 4 and t.max_count == 3
    assert np.array_equal(t.counts(60.0), [2, 3, 2])
    assert np.array_equal(t.count_at([-1.0, 0.0, 59.9]), [0, 2, 2])
    assert np.array_equal(t.removals(), [120.0])
    assert t.node_ids[3] == ("node1",)
    assert t.node_seconds() == pytest.approx(2 * 60 + 3 * 60)


def test_node_count_csv_gives_the_same_counts(tmp_path: Path) -> None:
    p = write(tmp_path / "count.csv", "0,1\n0,2\n60000,3\n120000,2\n")
    assert np.array_equal(read_availability(p).counts(60.0), [2, 3, 2])


def test_spotserve_segment_skips_other_events_and_ends_at_done(tmp_path: Path) -> None:
    lines = [[0, "add", {"nodes": ["a", "b", "c"]}], [60000, "remove", {"nodes": ["a", "b"]}],
             [90000, "other", {"nodes": [], "required_tpt": 0.8}], [120000, "add", {"nodes": ["d"]}],
             [300000, "DONE", {"nodes": []}]]
    p = write(tmp_path / "seg.txt", "\n".join(json.dumps(x) for x in lines) + "\n")
    t = read_availability(p)
    assert t.duration_s == 300.0 and np.array_equal(t.delta, [3, -2, 1])
    assert np.array_equal(t.counts(60.0), [3, 1, 2, 2, 2, 2])


def test_skypilot_counts_become_events(tmp_path: Path) -> None:
    p = write(tmp_path / "zone.json", json.dumps({"metadata": {"gap_seconds": 300}, "data": [0, 4, 4, 2, 5]}))
    assert is_availability_trace(p)
    t = read_availability(p)
    assert np.array_equal(t.delta, [4, -2, 3]) and t.duration_s == 1500.0
    assert np.array_equal(t.counts(300.0, end_s=1200.0), [0, 4, 4, 2, 5])


@pytest.mark.parametrize("name, text, where", [
    ("bad.csv", "0,add,n1\n60000,explode,n2\n", "bad.csv:2"),
    ("bad.txt", '[0, "add", {"nodes": ["a"]}]\nnot json\n', "bad.txt:2"),
    ("bad.json", '{"metadata": {}, "data": [1]}', "bad.json"),
    ("when.csv", "soon,add,n1\n", "when.csv:1"),
])
def test_malformed_traces_name_file_and_line(tmp_path: Path, name: str, text: str, where: str) -> None:
    with pytest.raises(InputError) as exc:
        read_availability(write(tmp_path / name, text))
    assert exc.value.where == where


def test_request_traces_are_not_availability_traces(tmp_path: Path) -> None:
    p = write(tmp_path / "azure.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,3\n")
    assert not is_availability_trace(p)
    with pytest.raises(InputError, match="no such file"):
        read_availability(tmp_path / "missing.csv")


def test_trace_invariants() -> None:
    with pytest.raises(ValueError):
        AvailabilityTrace("x", np.array([2.0, 1.0]), np.array([1, 1]), 3.0)


def test_parcae_p3_persistence_matches_the_readme() -> None:
    path = SHARED_TRACES / "parcae_aws_p3" / "p3trace.csv"
    if not path.exists():
        pytest.skip(f"shared trace not found at {path}")
    y = read_availability(path).counts(60.0)
    assert y.max() == 32 and y[10:].min() == 10
    mae = np.mean(np.abs(y[11:] - y[10:-1]))
    assert mae == pytest.approx(0.47, abs=0.005)  # the README's persistence figure at 1 minute
