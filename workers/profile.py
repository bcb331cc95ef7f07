"""`fleetwise profile`: measure this worker's iterations and fit the latency model of `core.latency`.

Each grid point submits `batch` requests of `prompt` tokens at once and runs them to completion, so the engine's
own scheduler produces prefill iterations (possibly chunked), decode iterations at growing context and, between
them, mixed ones; every iteration is recorded with its batch features (the scheduler's `Batch` counters, the same
numbers the simulator feeds its LatencyModel) and its wall time. The five coefficients are fitted by non-negative
least squares on relative error (each row divided by the predicted time, so short and long iterations weigh
alike; iteratively reweighted) on a random three quarters of the iterations; the held-out quarter gives the
profile's `FitError`.
A grid alone fits a machine that serves nothing else: iterations back to back, batches that start together. A
serving worker's iterations run between arrivals, with batches that grow and shrink one request at a time, prefill
chunks beside decodes, idle gaps and a client thread — and on a CPU they cost measurably more (the same decode batch
took up to 34 % longer in a replay than in the grid, bench/sim_fidelity.py). So a second phase serves a synthetic
load (`ServedLoad`: Poisson arrivals, lengths spread over the grid's range, seeded) through an `EngineLoop`, as the
worker serves, and every iteration it runs joins the grid's in the fit (calibration against real runs, as control
planes calibrate their latency models; docs/engine.md).
The per-request intake (`LatencyModel.admit_s`) is measured through the serving path: short single requests
submitted to an idle engine stepped by its `EngineLoop`, each timed from the `submit` call to its first token's
delivery, less the first iteration of a twin of the same prompt submitted at once after it, when the engine is warm
(`admission_s`).
Weight loading (cold → host → device) and KV copy bandwidth (device → host) are timed directly.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import nnls

from core.actions import Residency
from core.errors import InputError
from core.latency import FitError, LatencyModel
from core.requests import Request
from workers.control import EngineLoop
from workers.engine import Engine, StepReport
from workers.handles import REPLAY, RequestHandle

FEATURES = ("const", "prefill_tokens", "prefill_attn", "decode_seqs", "kv_tokens")


@dataclass(frozen=True)
class ProfileGrid:
    """The batches to measure: every (batch size, prompt length), each run to about `output_tokens` tokens.

    Within a batch, prompt and output lengths are spread evenly over ±`spread` of the point's values, as in served
    traffic: ragged contexts and sequences finishing at different steps cost what they cost in service.
    """

    batch_sizes: tuple[int, ...] = (1, 4, 16, 32)
    prompt_tokens: tuple[int, ...] = (16, 64, 256)
    output_tokens: int = 24
    repeats: int = 1
    spread: float = 0.5

    @property
    def points(self) -> list[tuple[int, int]]:
        return [(b, p) for _ in range(self.repeats) for b in self.batch_sizes for p in self.prompt_tokens]

    def lengths(self, batch: int, prompt: int) -> list[tuple[int, int]]:
        """(prompt, output) tokens of each request of one grid point."""
        factors = [1.0] if batch == 1 else [1 - self.spread + 2 * self.spread * i / (batch - 1) for i in range(batch)]
        return [(max(1, round(prompt * f)), max(2, round(self.output_tokens * g)))
                for f, g in zip(factors, reversed(factors), strict=True)]


@dataclass(frozen=True)
class ServedLoad:
    """The served phase of a profile: `requests` Poisson arrivals at `load` times the rate one unbatched request's
    service time allows (from the grid's fit), prompts log-uniform over the grid's prompt range, outputs uniform
    over 2 … 2 × its output tokens. `requests` 0: no served phase."""

    requests: int = 48
    load: float = 1.0
    seed: int = 1


@dataclass(frozen=True)
class Fit:
    """Fitted coefficients (seconds) and the error on held-out iterations."""

    c0_s: float
    c_prefill_s: float
    c_attn_s: float
    c_decode_s: float
    c_kv_s: float
    error: FitError
    num_train: int


def feature_matrix(samples: Sequence[StepReport]) -> tuple[np.ndarray, np.ndarray]:
    """Rows [1, prefill_tokens, prefill_attn, decode_seqs, kv_tokens] and measured seconds."""
    x = np.array([[1.0, s.prefill_tokens, s.prefill_attn, s.decode_seqs, s.kv_tokens] for s in samples])
    y = np.array([s.duration_s for s in samples])
    return x, y


def fit_latency(samples: Sequence[StepReport], *, holdout_fraction: float = 0.25, seed: int = 0) -> Fit:
    """NNLS on relative error over a random train split; MAPE and p90 on the rest (see the module docstring)."""
    x, y = feature_matrix(samples)
    if len(y) < 10:
        raise InputError("--batches/--prompts/--output-tokens", len(y), "a grid that runs at least 10 iterations "
                         "to fit and validate on (more batch sizes, prompt lengths or output tokens)",
                         problem=f"the grid ran {len(y)} iterations")
    order = np.random.default_rng(seed).permutation(len(y))
    n_hold = max(2, round(holdout_fraction * len(y)))
    hold, train = order[:n_hold], order[n_hold:]
    coef = _nnls_relative(x[train], y[train])
    rel = np.abs(x[hold] @ coef - y[hold]) / y[hold]
    error = FitError(mape=float(rel.mean()), p90_abs_rel_error=float(np.quantile(rel, 0.9)), num_heldout=len(hold))
    return Fit(*map(float, coef), error=error, num_train=len(train))


def _nnls_relative(x: np.ndarray, y: np.ndarray, rounds: int = 4) -> np.ndarray:
    """Non-negative coefficients minimising Σ (k_i (x·c − y) / (x·c))², by reweighted NNLS.

    Weighting by the model's prediction rather than the measurement: on a shared machine noise only ever adds time,
    and dividing by the measured time would favour the lucky iterations and fit below the mean. k_i balances the
    two kinds of iteration — with prefill tokens, and decode only — so that each kind's k_i sum to half the rows
    (k_i = n / (2 · rows of its kind)): served traffic runs
    ~20 decode iterations per prefill, and unbalanced, the fit traded prefill accuracy for decode (each prefill
    stalls every running request's next token, so both kinds set TPOT; bench/sim_fidelity.py, docs/engine.md).
    """
    prefill = x[:, 1] > 0
    kinds = np.where(prefill, 0.5 / max(prefill.sum(), 1), 0.5 / max((~prefill).sum(), 1)) * len(y)
    weights = kinds / y  # first round: the measurements themselves
    coef = np.zeros(x.shape[1])
    for _ in range(rounds):
        xw, yw = x * weights[:, None], y * weights
        scale = np.maximum(np.abs(xw).max(axis=0), 1e-30)  # columns to unit range: conditioning for NNLS
        coef = nnls(xw / scale, yw)[0] / scale
        weights = kinds / np.maximum(x @ coef, 1e-9)
    return coef


def measure(engine: Engine, model: str, grid: ProfileGrid,
            progress: Callable[[int, int], None] | None = None) -> list[StepReport]:
    """Run the grid on `model` (active) and return every compute iteration; a first point warms up, unrecorded."""
    samples: list[StepReport] = []
    next_id = iter(range(1 << 50, 1 << 51))
    points = grid.points
    for i, (batch, prompt) in enumerate([points[0], *points]):
        for prompt_len, output_len in grid.lengths(batch, prompt):
            engine.submit(Request(next(next_id), 0.0, model, _online_class(engine), prompt_len, output_len))
        reports = engine.run_until_idle()
        if i:  # point 0 is the warm-up
            samples += [r for r in reports if r.model == model and not r.swap_tokens]
            if progress:
                progress(i, len(points))
    return samples


def measure_served(engine: Engine, model: str, grid: ProfileGrid, unbatched_s: Callable[[int, int], float],
                   load: ServedLoad = ServedLoad()) -> list[StepReport]:
    """Serve `load` on `model` (active; the engine idle and stepped by nobody else) through an `EngineLoop`, each
    request submitted at its arrival from this thread, and return every iteration of it, timed by its loop cycle
    where it ran back to back with the previous one and no request arrived in between (`EngineLoop.on_step`: the
    time between iterations, which is what the simulator's clock advances by), else by its own time.
    `unbatched_s(prompt, output)`: one request's service time alone (from the grid's fit), which sets the arrival
    rate."""
    if load.requests <= 0:
        return []
    rng = np.random.default_rng(load.seed)
    lo, hi = min(grid.prompt_tokens), max(grid.prompt_tokens)
    prompts = np.exp(rng.uniform(np.log(lo), np.log(hi), load.requests)).round().astype(int)
    outputs = rng.integers(2, 2 * grid.output_tokens + 1, load.requests)
    mean_s = float(np.mean([unbatched_s(int(p), int(o)) for p, o in zip(prompts, outputs, strict=True)]))
    arrivals = np.cumsum(rng.exponential(mean_s / load.load, load.requests))
    online, next_id = _online_class(engine), iter(range(1 << 52, 1 << 53))
    samples: list[StepReport] = []
    handles = []
    submitted: list[float] = []  # perf_counter of each submit, in order

    def record(report: StepReport, previous_end: float | None, end: float) -> None:
        if report.model != model or report.swap_tokens:
            return
        # Back to back, an iteration costs the time since the previous one ended; after an idle wait, or with a
        # submit in between (its intake is `admit_s`, charged to the request), its own time.
        intake = previous_end is None or bisect.bisect_left(submitted, previous_end) < len(submitted)
        samples.append(report if intake else replace(report, duration_s=end - previous_end))

    loop = EngineLoop(engine, on_step=record)
    start = time.monotonic()
    loop.start()
    try:
        for at, prompt, output in zip(arrivals, prompts, outputs, strict=True):
            time.sleep(max(0.0, start + at - time.monotonic()))
            submitted.append(time.perf_counter())
            result, handle = engine.submit(Request(next(next_id), 0.0, model, online, int(prompt), int(output)),
                                           REPLAY)
            if handle is None:
                raise RuntimeError(f"served-phase request rejected: {result.message}")
            handles.append(handle)
        for handle in handles:
            if not handle.wait(600):
                raise RuntimeError("served-phase request did not finish within 600 s")
    finally:
        loop.stop()
    return samples


PROBE_PROMPTS = (8, 16, 32)  # short: the probe iteration's own jitter must stay below the intake it isolates


def admission_s(engine: Engine, model: str, probes: int = 16, gap_s: float = 0.03) -> float:
    """Per-request intake of `model` (active; the engine idle and stepped by nobody else), through an `EngineLoop`.

    Each probe is a short single request submitted `gap_s` after the engine went idle (the loop asleep), timed from
    `submit` to the delivery of its first token; at once after it, a twin of the same prompt finds the engine warm,
    and its first iteration's time (from the loop's step reports) is what the latency model predicts for that
    prefill. The probe's intake is the difference: the call, the loop's wake-up and the first iteration's extra cost
    after idleness (cold caches: on Tiny-Llama-2L on a CPU, 1.6 ms against 0.9 ms warm), none of which the fitted
    iterations hold. Timing both on the same prompt at the same moment keeps a change of the machine's load during
    the probes out of the difference. Returns the lower quartile over the probes: other load only ever adds time,
    and can delay a few wake-ups. A first probe warms up."""
    lengths = [PROBE_PROMPTS[i % len(PROBE_PROMPTS)] for i in range(probes + 1)]
    next_id = iter(range(1 << 51, 1 << 52))
    online = _online_class(engine)
    steps: list[StepReport] = []
    loop = EngineLoop(engine, on_step=lambda report, _previous, _end: steps.append(report)).start()
    intakes = []
    try:
        for prompt in lengths:
            time.sleep(gap_s)
            first = len(steps)
            to_first_token = _first_token_s(engine, Request(next(next_id), 0.0, model, online, prompt, 2))
            _first_token_s(engine, Request(next(next_id), 0.0, model, online, prompt, 2))
            # The engine runs nothing else, so the prefills reported since are the probe's and then the twin's;
            # the twin's was reported before its second (last) iteration began, hence before the twin finished.
            twin = [report for report in steps[first:] if report.prefill_tokens][1]
            intakes.append(to_first_token - twin.duration_s)
    finally:
        loop.stop()
    return max(0.0, float(np.quantile(intakes[1:], 0.25)))


def _first_token_s(engine: Engine, request: Request) -> float:
    """Seconds from submitting `request` to its first token reaching the caller's side of its handle."""
    stamp: list[float] = []

    def on_token(_: RequestHandle, token: int | None) -> None:
        if token is not None and not stamp:
            stamp.append(time.perf_counter())

    start = time.perf_counter()
    result, handle = engine.submit(request, REPLAY)
    if handle is None:
        raise RuntimeError(f"probe request rejected: {result.message}")
    handle.subscribe(on_token)
    if not handle.wait(60):
        raise RuntimeError("probe request did not finish within 60 s")
    return stamp[0] - start


def kv_copy_bytes_per_s(engine: Engine, model: str, num_blocks: int = 64, repeats: int = 3) -> float:
    """Device → host KV bandwidth over `num_blocks` whole blocks (the best of `repeats`)."""
    mem = engine.memory
    layout = engine.layout(model)
    blocks = max(1, min(num_blocks, engine.pool.num_pages * layout.blocks_per_page,
                        mem.host_pool.num_pages * layout.blocks_per_page))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mem.copy_raw(model, list(range(blocks)), list(range(blocks)), to_host=True)
        best = min(best, time.perf_counter() - start)
    return blocks * layout.block_bytes / best


def activation_times(engine: Engine, model: str) -> tuple[float, float]:
    """(disk → host, host → device) seconds: the model is sent cold and activated, then to host and activated."""
    engine.deactivate(model, Residency.COLD, drain=False)
    cold = engine.activate(model)
    engine.deactivate(model, Residency.HOST, drain=False)
    warm = engine.activate(model)
    return cold.disk_to_host_s, warm.host_to_device_s


def profile_model(engine: Engine, model: str, grid: ProfileGrid, *, seed: int = 0, admit_probes: int = 16,
                  served: ServedLoad = ServedLoad(),
                  progress: Callable[[int, int], None] | None = None) -> LatencyModel:
    """Measure and fit one model on this worker: the grid, then the served phase (`served`), fitted together;
    returns a LatencyModel with its fit error. The engine must not be stepped by anyone else meanwhile (the served
    phase and `admit_probes` requests run through an `EngineLoop` of its own; 0 probes leave `admit_s` at 0)."""
    engine.activate(model)
    return fit_profile(engine, model, measure_round(engine, model, grid, served, seed=seed, progress=progress),
                       seed=seed, admit_probes=admit_probes)


def measure_round(engine: Engine, model: str, grid: ProfileGrid, served: ServedLoad = ServedLoad(), *,
                  seed: int = 0, progress: Callable[[int, int], None] | None = None) -> list[StepReport]:
    """The grid's iterations, then the served phase's (its rate from a fit of the grid's)."""
    samples = measure(engine, model, grid, progress)
    return samples + measure_served(engine, model, grid, unbatched_time(fit_latency(samples, seed=seed)), served)


def unbatched_time(fit: Fit) -> Callable[[int, int], float]:
    """One request's service time alone under `fit`: its prefill, then a decode iteration per further token."""
    lm = LatencyModel(arch="", gpu_type="", tp=1, c0_s=fit.c0_s, c_prefill_s=fit.c_prefill_s, c_attn_s=fit.c_attn_s,
                      c_decode_s=fit.c_decode_s, c_kv_s=fit.c_kv_s, disk_to_host_s=0.0, host_to_gpu_s=0.0,
                      kv_swap_bytes_per_s=1.0, kv_bytes_per_token=0)
    return lambda prompt, output: lm.prefill_s(prompt) + (output - 1) * lm.decode_step_s(1, prompt + output / 2)


def fit_profile(engine: Engine, model: str, samples: Sequence[StepReport], *, seed: int = 0,
                admit_probes: int = 16) -> LatencyModel:
    """The LatencyModel of `model` (active on `engine`) from iterations `measure` recorded, possibly in several
    rounds (a benchmark interleaves them with its own runs so that both see the same machine load); the weight
    loads, KV copy bandwidth and intake are timed now."""
    fitted = _fitted_model(engine, model, fit_latency(samples, seed=seed))
    if admit_probes:
        fitted = replace(fitted, admit_s=admission_s(engine, model, admit_probes))
    return fitted


def _fitted_model(engine: Engine, model: str, fit: Fit) -> LatencyModel:
    disk_to_host_s, host_to_device_s = activation_times(engine, model)
    arch = engine.store.source(model).arch
    return LatencyModel(
        arch=arch.name, gpu_type=engine.config.gpu_type, tp=1, c0_s=fit.c0_s, c_prefill_s=fit.c_prefill_s,
        c_attn_s=fit.c_attn_s, c_decode_s=fit.c_decode_s, c_kv_s=fit.c_kv_s, disk_to_host_s=disk_to_host_s,
        host_to_gpu_s=host_to_device_s, kv_swap_bytes_per_s=kv_copy_bytes_per_s(engine, model),
        kv_bytes_per_token=engine.layout(model).bytes_per_token, source=f"profile:{engine.config.worker_id}",
        fit_error=fit.error,
    )


def _online_class(engine: Engine) -> str:
    return next(c.name for c in engine.slo_classes.values() if c.online)
