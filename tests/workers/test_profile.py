import threading
import time

import numpy as np
import pytest

from core.errors import InputError
from core.latency import load_profiles, save_profiles
from core.requests import Request
from tests.workers.engines import SOURCES, make_engine
from workers.engine import Engine, StepReport
from workers.handles import REPLAY
from workers.profile import ProfileGrid, ServedLoad, admission_s, fit_latency, measure_served, profile_model

TRUE = {"c0": 2e-3, "prefill": 4e-5, "attn": 1e-8, "decode": 5e-5, "kv": 3e-7}


def _synthetic(n: int, noise: float, seed: int = 0) -> list[StepReport]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prefill = int(rng.integers(0, 512)) if rng.random() < 0.5 else 0
        decode = int(rng.integers(1, 64)) if not prefill or rng.random() < 0.3 else 0
        attn = prefill * (prefill + 1) / 2
        kv = decode * int(rng.integers(16, 1024))
        t = TRUE["c0"] + TRUE["prefill"] * prefill + TRUE["attn"] * attn + TRUE["decode"] * decode + TRUE["kv"] * kv
        out.append(StepReport("m", prefill, attn, decode, kv, 0, t * (1 + noise * rng.standard_normal()), 0))
    return out


def test_nnls_recovers_the_coefficients_of_a_linear_worker() -> None:
    fit = fit_latency(_synthetic(200, noise=0.0))
    assert fit.c0_s == pytest.approx(TRUE["c0"], rel=1e-6)
    assert fit.c_kv_s == pytest.approx(TRUE["kv"], rel=1e-6)
    assert fit.error.mape < 1e-9 and fit.error.num_heldout == 50 and fit.num_train == 150


def test_noise_shows_up_in_the_held_out_error_and_coefficients_stay_non_negative() -> None:
    fit = fit_latency(_synthetic(200, noise=0.05, seed=1))
    assert 0.01 < fit.error.mape < 0.1 and fit.error.p90_abs_rel_error > fit.error.mape
    assert min(fit.c0_s, fit.c_prefill_s, fit.c_attn_s, fit.c_decode_s, fit.c_kv_s) >= 0
    with pytest.raises(InputError, match="at least 10 iterations"):
        fit_latency(_synthetic(5, noise=0.0))


class SlowIntakeEngine(Engine):
    """A real engine whose `submit` first waits `INTAKE_S`: an intake cost the iterations do not see."""

    def submit(self, request, params=REPLAY):
        time.sleep(INTAKE_S)
        return super().submit(request, params)


INTAKE_S = 0.02


def slow_intake_engine() -> Engine:
    """`make_engine`'s configuration, nothing active."""
    return SlowIntakeEngine(make_engine(activate=()).config, SOURCES)


def test_profiling_a_real_engine_writes_a_loadable_profile(tmp_path) -> None:
    engine = slow_intake_engine()
    grid = ProfileGrid(batch_sizes=(1, 4), prompt_tokens=(8, 40), output_tokens=6)
    model = profile_model(engine, "a", grid)
    assert model.arch == "Tiny-Llama-2L" and model.source == "profile:local/0"
    assert model.fit_error is not None and model.fit_error.num_heldout >= 2
    assert model.disk_to_host_s > 0 and model.host_to_gpu_s > 0 and model.kv_swap_bytes_per_s > 0
    # The intake is measured through the submit path (where the engine waits 20 ms), not from the iterations.
    assert INTAKE_S / 2 < model.admit_s < INTAKE_S + 0.05
    path = tmp_path / "p.yaml"
    save_profiles(path, [model])
    assert load_profiles(path)[("Tiny-Llama-2L", "CPU", 1)] == model


def test_grid_points_spread_lengths_within_a_batch() -> None:
    grid = ProfileGrid(output_tokens=20, spread=0.5)
    assert grid.lengths(1, 40) == [(40, 20)]
    assert grid.lengths(3, 40) == [(20, 30), (40, 20), (60, 10)]


def test_intake_is_timed_through_the_engine_loop_which_is_stopped_afterwards() -> None:
    engine = slow_intake_engine()
    engine.activate("a")
    assert INTAKE_S / 2 < admission_s(engine, "a", probes=4, gap_s=0.01) < INTAKE_S + 0.05
    assert not [t for t in threading.enumerate() if t.name == f"engine-{engine.config.worker_id}"]
    engine.submit(Request(7, 0.0, "a", "interactive", 8, 2))  # stepped by the caller again
    assert engine.run_until_idle() and not engine.has_work


class LoadArrivesEngine(SlowIntakeEngine):
    """Iterations take `LOAD_S` longer from the `after`-th on: other work starting on the machine mid-probe."""

    after = 18

    def _work(self, batch):
        if self.num_steps >= self.after:
            time.sleep(LOAD_S)
        return super()._work(batch)


LOAD_S = 0.03


def test_intake_stays_put_when_the_machine_gets_busier_during_the_probes() -> None:
    """Each probe is paired with a warm twin run right after it, so load that arrives halfway slows both alike; timed
    in two phases (all probes, then all twins) the twins would all be slowed and the intake come out at 0."""
    engine = LoadArrivesEngine(make_engine(activate=()).config, SOURCES)
    engine.activate("a")
    engine.after = engine.num_steps + 18  # four iterations per probe: load arrives after 4½ of the 9 probes
    assert INTAKE_S / 2 < admission_s(engine, "a", probes=8, gap_s=0.01) < INTAKE_S + 0.01


def test_served_phase_times_back_to_back_iterations_by_their_loop_cycle() -> None:
    """Served traffic through the engine loop: every iteration is recorded; one that ran right after another with no
    arrival in between costs the time between their ends (at least its own time), the others their own time."""
    from workers import control

    engine = make_engine(activate=("a",))
    grid = ProfileGrid(batch_sizes=(1,), prompt_tokens=(8, 24), output_tokens=8)
    seen: list[tuple[StepReport, float | None, float]] = []
    original = control.EngineLoop.__init__

    def spy(self, eng, **kwargs):  # keep what the loop reports, beside what the profile records
        inner = kwargs["on_step"]
        kwargs["on_step"] = lambda r, prev, end: (seen.append((r, prev, end)), inner(r, prev, end))
        original(self, eng, **kwargs)

    control.EngineLoop.__init__ = spy
    try:
        samples = measure_served(engine, "a", grid, lambda p, o: 0.02, ServedLoad(requests=12, seed=3))
    finally:
        control.EngineLoop.__init__ = original
    assert len(samples) == len(seen) > 0
    assert sum(r.num_finished for r, _, _ in seen) == 12 and not engine.has_work
    cycles = 0
    for s, (r, prev, end) in zip(samples, seen, strict=True):
        if prev is None:  # after an idle wait: its own time
            assert s.duration_s == r.duration_s
        elif s.duration_s != r.duration_s:  # back to back, nothing arrived: the loop's overhead on top
            assert s.duration_s == pytest.approx(end - prev) and s.duration_s >= r.duration_s
            cycles += 1
    assert cycles > 0
    assert not [t for t in threading.enumerate() if t.name == f"engine-{engine.config.worker_id}"]
    assert measure_served(engine, "a", grid, lambda p, o: 0.005, ServedLoad(requests=0)) == []
