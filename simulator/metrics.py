"""What a simulation measured, per request (numpy columns indexed like the replayed RequestTable) and per run.

Definitions (the what-if report's keys):
- TTFT = first token − arrival; TPOT = (finish − first token) ÷ (output tokens − 1), 0 for one-token outputs;
  end-to-end = finish − arrival. Percentiles are over completed requests.
- A request *attains* its SLO when it completed and both its TTFT and TPOT targets hold; offline classes attain
  when completed; dropped requests are misses. Attainment is a fraction of all requests.
- Goodput: output tokens of requests that attained their SLO, per second of the replayed span (first arrival to
  the last completion).
- GPU-hours: the time each GPU is *billed* — it holds weights (an active or loading replica, or a TP group's
  shard) — summed, ÷ 3600. Cost: each GPU's billed hours × its pool's hourly price. An empty GPU costs nothing
  (it could be released or lent).
- Attainment over time: per window of arrival time; GPUs active: the mean number billed in the window.

No request is lost silently: at the end every request is completed or dropped with a reason (`check_complete`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError, NotFoundError
from core.fleet import FleetSpec
from core.requests import RequestTable
from workers.scheduler import Sequence

IN_FLIGHT, COMPLETED, DROPPED = 0, 1, 2
_FLUSH = 65536


class MetricsRecorder:
    """Collects per-request outcomes during a run (buffered, then written to numpy columns)."""

    def __init__(self, table: RequestTable) -> None:
        n = len(table)
        self.table = table
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.generated = np.zeros(n, np.int32)
        self.state = np.zeros(n, np.int8)
        self.drop_reason = np.full(n, -1, np.int16)
        self.preemptions = np.zeros(n, np.int16)
        self.recomputed_tokens = np.zeros(n, np.int32)
        self.waited_at_router = np.zeros(n, bool)  # found no replica of its model and waited at the router
        self.waited_for_activation = np.zeros(n, bool)  # was sent to a replica whose weights were still loading
        self.reasons: list[str] = []
        self.actions: Counter[tuple[str, str]] = Counter()  # (kind, status) → count
        self.gpu_steps: list[tuple[float, int]] = []  # (time, GPUs billed from then on)
        self.num_completed = 0
        self.num_dropped = 0
        self.gpus_removed = 0  # GPUs taken away after the run's start (spot preemptions, failures)
        self._buffer: list[tuple[int, float, float, int, int, int]] = []

    def finished(self, seqs: list[Sequence]) -> None:
        buf = self._buffer
        for s in seqs:
            buf.append((s.seq_id, s.first_token_s, s.finish_s, s.num_generated, s.num_preemptions,  # type: ignore[arg-type]
                        s.num_recomputed_tokens))
        self.num_completed += len(seqs)
        if len(buf) >= _FLUSH:
            self.flush()

    def dropped(self, row: int, reason: str, seq: Sequence | None = None) -> None:
        if self.state[row] != IN_FLIGHT:
            raise AssertionError(f"request row {row} ended twice")
        try:
            code = self.reasons.index(reason)
        except ValueError:
            code = len(self.reasons)
            self.reasons.append(reason)
        self.state[row] = DROPPED
        self.drop_reason[row] = code
        if seq is not None:
            self.first_token_s[row] = np.nan if seq.first_token_s is None else seq.first_token_s
            self.generated[row] = seq.num_generated
            self.preemptions[row] = seq.num_preemptions
        self.num_dropped += 1

    def flush(self) -> None:
        if not self._buffer:
            return
        rows, first, finish, gen, pre, rec = (np.asarray(c) for c in zip(*self._buffer))
        if np.any(self.state[rows] != IN_FLIGHT):
            raise AssertionError("a request completed twice")
        self.state[rows] = COMPLETED
        self.first_token_s[rows], self.finish_s[rows], self.generated[rows] = first, finish, gen
        self.preemptions[rows], self.recomputed_tokens[rows] = pre, rec
        self._buffer.clear()

    def gpus_billed(self, time_s: float, count: int) -> None:
        self.gpu_steps.append((time_s, count))

    def check_complete(self) -> None:
        """Every request completed or dropped with a reason (raises AssertionError naming the first lost one)."""
        self.flush()
        lost = np.flatnonzero(self.state == IN_FLIGHT)
        if lost.size:
            raise AssertionError(f"{lost.size} requests neither completed nor dropped (first row {lost[0]})")
        if np.any((self.state == DROPPED) & (self.drop_reason < 0)):
            raise AssertionError("a dropped request has no reason")


@dataclass
class SimResult:
    """One run's per-request columns and totals; `figures()` is the what-if report's entry for the policy."""

    table: RequestTable
    fleet: FleetSpec
    first_token_s: np.ndarray
    finish_s: np.ndarray
    generated: np.ndarray
    state: np.ndarray
    drop_reason: np.ndarray
    reasons: list[str]
    preemptions: np.ndarray
    recomputed_tokens: np.ndarray
    waited_at_router: np.ndarray
    waited_for_activation: np.ndarray
    actions: Counter
    gpu_seconds_by_pool: dict[str, float]
    gpu_steps: list[tuple[float, int]]
    plans: int
    wall_s: float
    sim_end_s: float
    num_events: int
    window_s: float
    config: dict[str, object] = field(default_factory=dict)
    gpus_removed: int = 0  # GPUs taken away after the run's start (spot preemptions, failures)

    @classmethod
    def from_recorder(cls, rec: MetricsRecorder, fleet: FleetSpec, **totals) -> SimResult:
        rec.flush()
        return cls(rec.table, fleet, rec.first_token_s, rec.finish_s, rec.generated, rec.state, rec.drop_reason,
                   list(rec.reasons), rec.preemptions, rec.recomputed_tokens, rec.waited_at_router,
                   rec.waited_for_activation, Counter(rec.actions), gpu_steps=list(rec.gpu_steps),
                   gpus_removed=rec.gpus_removed, **totals)

    # -- per request -------------------------------------------------------------------------------------------
    @property
    def completed(self) -> np.ndarray:
        return self.state == COMPLETED

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.table.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        gen = self.generated.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gen > 1, (self.finish_s - self.first_token_s) / np.maximum(gen - 1, 1), 0.0)

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.table.arrival_s

    def _targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per request: TTFT target, TPOT target (inf when none) and whether its class is online."""
        classes = []
        for name in self.table.slo_names:
            try:
                classes.append(self.fleet.slo_class(name))
            except NotFoundError:
                raise InputError("slo_class", name, f"a class of fleet {self.fleet.name}") from None
        ttft = np.array([c.ttft_s if c.online and c.ttft_s else np.inf for c in classes])[self.table.slo_idx]
        tpot = np.array([c.tpot_s if c.online and c.tpot_s else np.inf for c in classes])[self.table.slo_idx]
        online = np.array([c.online for c in classes], bool)[self.table.slo_idx]
        return ttft, tpot, online

    def attainment(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per request: (SLO attained, TTFT attained, TPOT attained) as boolean columns."""
        ttft_t, tpot_t, online = self._targets()
        done = self.completed
        with np.errstate(invalid="ignore"):
            ttft_ok = done & (~online | (self.ttft_s <= ttft_t))
            tpot_ok = done & (~online | (self.tpot_s <= tpot_t + 1e-12))
        return ttft_ok & tpot_ok, ttft_ok, tpot_ok

    # -- figures -----------------------------------------------------------------------------------------------
    def figures(self) -> dict[str, object]:
        """The what-if report's entry for this run (keys of issue 3, plus per-model and timeline)."""
        n = len(self.table)
        slo, ttft_ok, tpot_ok = self.attainment()
        done = self.completed
        span = self._span_s()
        good_tokens = float(self.generated[slo].sum())
        cost = sum(sec / 3600 * self.fleet.pool(p).hourly_price for p, sec in self.gpu_seconds_by_pool.items())
        return {
            "slo_attainment": _frac(slo.sum(), n), "ttft_attainment": _frac(ttft_ok.sum(), n),
            "tpot_attainment": _frac(tpot_ok.sum(), n),
            "per_class": self._breakdown(self.table.slo_idx, self.table.slo_names, slo, ttft_ok, tpot_ok),
            "per_model": self._breakdown(self.table.model_idx, self.table.model_names, slo, ttft_ok, tpot_ok),
            "ttft_s": _pcts(self.ttft_s[done]), "tpot_s": _pcts(self.tpot_s[done]), "e2e_s": _pcts(self.e2e_s[done]),
            "goodput_tokens_per_s": good_tokens / span if span > 0 else 0.0,
            "gpu_hours": sum(self.gpu_seconds_by_pool.values()) / 3600, "cost_usd": cost,
            "requests": {"total": n, "completed": int(done.sum()), "dropped": int((self.state == DROPPED).sum())},
            "dropped_by_reason": self.dropped_by_reason(),
            "actions": dict(sorted(Counter({k: c for (k, s), c in self.actions.items() if s in ("applied", "deferred")}
                                           ).items())),
            "actions_by_status": {f"{k}:{s}": c for (k, s), c in sorted(self.actions.items())},
            "plans": self.plans, "wall_s": self.wall_s,
            "preemptions": int(self.preemptions.sum()), "recomputed_tokens": int(self.recomputed_tokens.sum()),
            "waited_at_router": int(self.waited_at_router.sum()),
            "waited_for_activation": int(self.waited_for_activation.sum()),
            "sim_span_s": span, "events": self.num_events, "gpus_removed": self.gpus_removed,
            "timeline": self.timeline(slo),
        }

    def dropped_by_reason(self) -> dict[str, int]:
        codes = self.drop_reason[self.state == DROPPED]
        return {self.reasons[c]: int(k) for c, k in zip(*np.unique(codes, return_counts=True))}

    def _span_s(self) -> float:
        if not len(self.table):
            return 0.0
        end = np.nanmax(self.finish_s) if np.any(self.completed) else self.table.arrival_s[-1]
        return float(max(end, self.table.arrival_s[-1]) - self.table.arrival_s[0])

    def _breakdown(self, idx: np.ndarray, names: tuple[str, ...], slo: np.ndarray, ttft_ok: np.ndarray,
                   tpot_ok: np.ndarray) -> dict[str, dict[str, float]]:
        total = np.bincount(idx, minlength=len(names))
        sums = [np.bincount(idx, weights=col, minlength=len(names)) for col in (slo, ttft_ok, tpot_ok)]
        return {name: {"slo_attainment": _frac(sums[0][i], total[i]), "ttft_attainment": _frac(sums[1][i], total[i]),
                       "tpot_attainment": _frac(sums[2][i], total[i]), "requests": int(total[i])}
                for i, name in enumerate(names) if total[i]}

    def timeline(self, slo: np.ndarray | None = None) -> dict[str, object]:
        """Attainment, requests and mean billed GPUs per window of arrival time."""
        if slo is None:
            slo = self.attainment()[0]
        w = self.window_s
        start = self.table.start_s
        bins = np.floor((self.table.arrival_s - start) / w).astype(np.int64) if len(self.table) else np.zeros(0, int)
        k = int(bins.max()) + 1 if bins.size else 0
        count = np.bincount(bins, minlength=k)
        hit = np.bincount(bins, weights=slo, minlength=k)
        edges = start + w * np.arange(k + 1)
        return {"window_s": w, "t_s": [float(x) for x in edges[:-1] - start],
                "slo_attainment": [_frac(h, c) for h, c in zip(hit, count)],
                "requests": [int(c) for c in count], "gpus_active": self._mean_gpus(edges)}

    def _mean_gpus(self, edges: np.ndarray) -> list[float]:
        if len(edges) < 2:
            return []
        steps = self.gpu_steps or [(float(edges[0]), 0)]
        t = np.array([s[0] for s in steps])
        v = np.array([s[1] for s in steps], float)
        grid = np.union1d(edges, t[(t > edges[0]) & (t < edges[-1])])
        level = v[np.clip(np.searchsorted(t, grid[:-1], side="right") - 1, 0, None)]
        level[grid[:-1] < t[0]] = 0.0
        area = np.cumsum(np.concatenate([[0.0], level * np.diff(grid)]))
        at_edges = np.interp(edges, grid, area)
        return [float(x) for x in np.diff(at_edges) / np.diff(edges)]


def _frac(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _pcts(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if not values.size:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean())}
