"""ServeGen: reading rate series, what param1/param2 mean, and synthesis that reproduces the per-window rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from tests.factories import make_table
from tests.workloads.helpers import M_LARGE, need, write_servegen
from workloads.arrivals import Family, empty_window_probability, weibull_cv
from workloads.lengths import AZURE_CONV_LENGTHS
from workloads.servegen import ServeGenSet, read_servegen, synthesize
from workloads.tabular import TraceOrderWarning


@pytest.fixture(scope="module")
def m_large() -> ServeGenSet:
    return read_servegen(need(M_LARGE))


def _small(tmp_path: Path) -> ServeGenSet:
    return read_servegen(write_servegen(tmp_path / "toy", {
        0: ["0,2.0,1.0,Gamma,1.0,0.5", "600,0,0,,0,0", "1200,0.5,3.0,Weibull,0.4,0.3"],
        7: ["0,0,0,,0,0", "600,1.0,2.0,Gamma,0.25,4.0", "1200,0,0,,0,0"],
    }))


def test_read_small_folder(tmp_path: Path) -> None:
    sg = _small(tmp_path)
    assert sg.name == "toy" and list(sg.clients) == [0, 7] and sg.window_s == 600.0
    assert sg.rate_per_s.shape == (2, 3) and list(sg.total_rate_per_s()) == [2.0, 1.0, 0.5]
    assert sg.family.tolist() == [[Family.GAMMA, 0, Family.WEIBULL], [0, Family.GAMMA, 0]]
    assert sg.expected_requests() == pytest.approx(3.5 * 600)
    assert sg.model_names() == ("toy-c000", "toy-c007") and sg.model_names(per_client=False) == ("toy",)


def test_m_large_loads_162_clients_by_2016_windows(m_large: ServeGenSet) -> None:
    assert (m_large.num_clients, m_large.num_windows, m_large.window_s) == (162, 2016, 600.0)
    assert list(m_large.clients) == list(range(162))
    assert m_large.expected_requests() == pytest.approx(236.89e6, rel=1e-3)


def test_param_meaning_gamma_is_shape_scale_and_its_cv_matches(m_large: ServeGenSet) -> None:
    """Gamma windows: param1 = shape, param2 = scale; CV = 1/sqrt(shape) equals the cv column, and the mean gap
    shape·scale is 1/rate wherever the window holds enough requests for the fit to see the whole window."""
    g = m_large.family == Family.GAMMA
    np.testing.assert_allclose(1 / np.sqrt(m_large.param1[g]), m_large.cv[g], rtol=1e-6)
    busy = g & (m_large.rate_per_s >= 2.0)
    ratio = 1 / (m_large.param1[busy] * m_large.param2[busy] * m_large.rate_per_s[busy])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.005) and np.percentile(ratio, 90) < 1.01


def test_param_meaning_weibull_is_shape_scale_fitted_not_moment_matched(m_large: ServeGenSet) -> None:
    """Weibull windows: param1 = shape k, param2 = scale λ; the fit reproduces the CV column when traffic is
    near-Poisson but understates it in bursty windows — so synthesis trusts the cv column (docs/workloads.md)."""
    w = m_large.family == Family.WEIBULL
    cv_fit = weibull_cv(m_large.param1[w])
    calm, bursty = m_large.cv[w] < 2, m_large.cv[w] > 8
    assert np.median(cv_fit[calm] / m_large.cv[w][calm]) == pytest.approx(1.0, abs=0.05)
    assert np.median(cv_fit[bursty] / m_large.cv[w][bursty]) < 0.5


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        (["0,1.0,1.0,Gamma,1,1", "600,1.0,1.0,Lognormal,1,1"], "chunk-0-trace.csv:2"),
        (["0,1.0,1.0,Gamma,1,1", "600,x,1.0,Gamma,1,1"], "chunk-0-trace.csv:2"),
        (["0,1.0,1.0,Gamma,1,1", "600,-1,1.0,Gamma,1,1"], "-1"),
        (["0,1.0,1.0,Gamma,1,1", "600,1.0,0,Gamma,1,1"], "cv"),
        (["0,1.0,1.0,Gamma,1,1", "600,1.0,1.0,Gamma,1"], "empty"),
        (["0,1.0,1.0,Gamma,1,1", "700,1.0,1.0,Gamma,1,1", "1300,0,0,,0,0"], "evenly spaced"),
    ],
)
def test_bad_servegen_rows(tmp_path: Path, rows: list[str], text: str) -> None:
    with pytest.raises(InputError, match=text.replace(".", r"\.")):
        read_servegen(write_servegen(tmp_path / "bad", {0: rows}))


def test_clients_must_share_windows(tmp_path: Path) -> None:
    folder = write_servegen(tmp_path / "f", {0: ["0,1,1,Gamma,1,1", "600,1,1,Gamma,1,1"], 1: ["0,1,1,Gamma,1,1"]})
    with pytest.raises(InputError, match="chunk-1-trace.csv.*windows differ"):
        read_servegen(folder)


def test_not_a_servegen_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ServeGen folder"):
        read_servegen(tmp_path)


def test_unsorted_windows_are_sorted_with_a_warning(tmp_path: Path) -> None:
    folder = write_servegen(tmp_path / "f", {0: ["600,2,1,Gamma,1,0.5", "0,1,1,Gamma,1,1"]})
    with pytest.warns(TraceOrderWarning, match="1 of 2"):
        sg = read_servegen(folder)
    assert list(sg.window_start_s) == [0, 600] and list(sg.rate_per_s[0]) == [1, 2]


def test_synthesis_names_models_and_resamples_length_pairs(tmp_path: Path) -> None:
    sg = _small(tmp_path)
    lengths = make_table(50, prompt_tokens=300, output_tokens=40)
    table = synthesize(sg, lengths=lengths, seed=1)
    assert table.model_names == ("toy-c000", "toy-c007") and table.slo_names == ("default",)
    assert set(table.prompt_tokens) == {300} and set(table.output_tokens) == {40}
    assert np.all(np.diff(table.arrival_s) >= 0) and table.arrival_s.max() < 1800
    per_folder = synthesize(sg, lengths=lengths, seed=1, per_client=False, model_prefix="big")
    assert per_folder.model_names == ("big",) and len(per_folder) == len(table)


def test_slices_rate_scale_and_seeds(tmp_path: Path) -> None:
    sg = _small(tmp_path)
    full = synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=4)
    again = synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=4)
    assert np.array_equal(full.arrival_s, again.arrival_s) and np.array_equal(full.model_idx, again.model_idx)
    assert not np.array_equal(full.arrival_s, synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=5).arrival_s)
    part = synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=4, start_s=900, end_s=1500)
    assert part.arrival_s.min() >= 0 and part.arrival_s.max() < 600  # relative to start_s
    # only window 1 (client 7, 1 req/s) and the first 300 s of window 2 (client 0, 0.5 req/s) are in the slice
    assert 300 * 1.0 + 300 * 0.5 - 150 < len(part) < 300 * 1.0 + 300 * 0.5 + 150
    doubled = synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=4, rate_scale=2.0)
    assert len(doubled) == pytest.approx(2 * sg.expected_requests(), rel=0.15)
    with pytest.raises(InputError, match="end_s"):
        synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=4, start_s=600, end_s=600)


def test_chunk_aligned_slice_reproduces_the_full_run(m_large: ServeGenSet) -> None:
    sub = m_large.select(np.arange(100, 110))
    full = synthesize(sub, lengths=AZURE_CONV_LENGTHS, seed=9, end_s=4 * 3600)
    part = synthesize(sub, lengths=AZURE_CONV_LENGTHS, seed=9, start_s=3600, end_s=7200)
    expected = full.between(3600, 7200)
    np.testing.assert_allclose(part.arrival_s + 3600, expected.arrival_s, atol=1e-6)
    assert np.array_equal(part.model_idx, expected.model_idx)


def test_per_window_counts_match_the_source_within_sampling_error(m_large: ServeGenSet) -> None:
    """14 days of a seeded subset of m-large clients (the full 162-client run is bench/workload_load.py).

    For a stationary renewal process, the count in a window has mean rate·600 and variance ≈ rate·600·cv². Per
    window (summed over clients), z = (count − mean) / sd must look standard normal: mean z² ≈ 1, no bias, no
    extreme outliers; and per (client, window) the totals per family must match.
    """
    totals = m_large.rate_per_s.sum(axis=1) * m_large.window_s
    clients = np.random.default_rng(2024).choice(m_large.clients[totals < 1e6], 30, replace=False)  # ~5.8 M requests
    sg = m_large.select(clients)
    table = synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=1)
    window = np.minimum((table.arrival_s // sg.window_s).astype(np.int64), sg.num_windows - 1)
    cell = table.model_idx.astype(np.int64) * sg.num_windows + window
    counts = np.bincount(cell, minlength=sg.rate_per_s.size).reshape(sg.rate_per_s.shape)

    mean = sg.rate_per_s * sg.window_s
    var = mean * sg.cv**2
    live = mean.sum(axis=0) > 0
    z = (counts.sum(axis=0)[live] - mean.sum(axis=0)[live]) / np.sqrt(var.sum(axis=0)[live])
    assert 0.75 < np.mean(z**2) < 1.25
    assert abs(z.sum()) / np.sqrt(z.shape[0]) < 4
    assert np.abs(z).max() < 6
    assert counts[mean == 0].sum() == 0  # no arrivals in windows without traffic
    for fam in (Family.GAMMA, Family.WEIBULL):
        cells = sg.family == fam
        assert abs(counts[cells].sum() - mean[cells].sum()) < 4 * np.sqrt(var[cells].sum())


def test_collection_gaps_are_silent_runs_between_busy_windows(m_large: ServeGenSet) -> None:
    assert not m_large.collection_gaps().any()  # m-large has no window where every client is silent
    mid = read_servegen(need(M_LARGE.parent / "m-mid"))
    gaps = mid.collection_gaps()
    runs = np.flatnonzero(np.diff(np.r_[0, gaps.astype(np.int8)]) == 1)
    assert gaps.sum() == 84 and runs.size == 8  # docs/forecasting.md and docs/workloads.md quote these
    assert np.all(mid.total_rate_per_s()[gaps] == 0.0)
    # the least improbable three runs (10^-168 to 10^-192: one side of each is a partly collected window) drop out
    # under a stricter threshold
    strict = mid.collection_gaps(max_probability=1e-200)
    assert np.flatnonzero(np.diff(np.r_[0, strict.astype(np.int8)]) == 1).size == 5 and not (strict & ~gaps).any()


def test_silence_between_bursty_windows_is_traffic_and_between_steady_ones_a_gap(tmp_path: Path) -> None:
    def folder(name: str, rate: float, cv: float) -> ServeGenSet:
        busy = f"{rate},{cv},Gamma,{1 / cv**2},{cv**2 / rate}"
        rows = [f"0,{busy}", "600,0,0,,0,0", f"1200,{busy}", "1800,0,0,,0,0"]  # the last silence bounds nothing
        return read_servegen(write_servegen(tmp_path / name, {1: rows, 2: rows}))

    assert folder("steady", 0.05, 1.0).collection_gaps().tolist() == [False, True, False, False]  # 30 a window
    assert not folder("bursty", 0.05, 40.0).collection_gaps().any()  # the same rate, CV 40: silence is likely


def test_empty_window_probability_is_poisson_at_cv_1_and_matches_a_simulated_renewal_process() -> None:
    assert empty_window_probability(5.0, 1.0) == pytest.approx(np.exp(-5.0))
    assert empty_window_probability(0.0, 3.0) == 1.0
    rng = np.random.default_rng(0)
    cv, mean_count = 2.0, 3.0  # rate 1, windows of 3
    times = np.cumsum(rng.gamma(1 / cv**2, cv**2, 400_000))
    starts = rng.uniform(0.0, times[-1] - 3.0, 100_000)
    empty = np.searchsorted(times, starts) == np.searchsorted(times, starts + 3.0)
    assert empty.mean() == pytest.approx(float(empty_window_probability(mean_count, cv)), abs=0.01)


def test_synthesis_refuses_more_requests_than_fit_in_memory(tmp_path: Path) -> None:
    sg = read_servegen(write_servegen(tmp_path / "huge", {0: ["0,1e300,1.0,Gamma,1.0,0.5"]}))
    with pytest.raises(InputError, match="make 6e\\+302 requests; at most [0-9,]+ requests on this machine"):
        synthesize(sg, lengths=AZURE_CONV_LENGTHS, seed=0)
