"""Forecast accuracy and speed of `forecasters/` on the public traces, each figure beside baselines measured in the
same run.

    python bench/forecast_accuracy.py [--workers 2] [--quick]

Writes bench/results/forecast_accuracy.json and prints a Rich table. Sections (targets from issue 4):

1. ServeGen totals (language/m-large, m-mid, m-small), 600 s windows: fit on days 1–10, rolling-origin test on days
   11–14 with the parameters fixed: WAPE at +10 min and +60 min, p90 coverage. fleetwise = `TotalForecaster`
   (bottom-up over clients unless the direct forecast backtests clearly better). Baselines: persistence,
   seasonal-naive (one day), and the method selected on the total alone. m-mid and m-small have windows of no
   data (every client silent at once between busy windows, `ServeGenSet.collection_gaps`): every method carries
   the last observed value over them, and they are not scored; a second score counts them as zero demand.
2. m-large per client (162 series): median over clients of the per-client WAPE at +10 min vs persistence.
3. Parcae AWS p3 at 1-minute intervals: MAE at +1 and +12 min vs persistence and ARIMA(1,1,0); coverage of the
   adaptive 80 % band (the target) and of the p10–p90 band.
   Young availability traces (fewer resolved origins than the forecaster's `min_samples`): ranked probability
   score from many starts of p3, g4dn (60 s and 300 s) and three SkyPilot 16-node zones (300 s), against binomial
   survival alone and persistence.
4. Azure conv and code: p90 coverage of the conditional output-length model on the chronologically last 20 % of
   requests; pinball loss vs the unconditional empirical distribution.
5. Speed: selection for 200 real series of 2,016 points (all m-large clients + 38 of m-mid), and the cheap refit of a
   replanning cycle (update + forecast) for the same 200.

Residuals that calibrate the test quantiles are all out of sample: validation forecasts (fitted on the part of
days 1–10 before them) before day 11, test forecasts after.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console
from rich.table import Table

from forecasters.availability import AvailabilityForecaster, backtest_availability
from forecasters.backtest import pinball_loss, ranked_probability_score, rolling_scores, scale_floor, wape
from forecasters.hierarchy import TotalForecaster
from forecasters.length_model import OutputLengthModel
from forecasters.lengths import LengthBatch
from forecasters.load import fit_many
from forecasters.methods import Persistence, SeasonalNaive
from forecasters.scenarios import SAMPLING_LEVELS
from forecasters.selection import LoadConfig, validation_split
from forecasters.series import carry_forward
from forecasters.sources import servegen_counts
from workloads.availability import read_availability
from workloads.azure import read_azure
from workloads.servegen import read_servegen

TRACES = ROOT.parent / "shared" / "data" / "traces"
RESULTS = ROOT / "bench" / "results"
DAY = 144  # 600 s windows per day
LEADS = (1, 6)


def test_scores(test_paths: np.ndarray, val_paths: np.ndarray | None, y: np.ndarray, fit_end: int,
                val_start: int, config: LoadConfig) -> dict[int, dict]:
    """Rolling-origin scores on origins ≥ fit_end-1; quantiles calibrated on out-of-sample residuals only."""
    paths = test_paths.copy()
    if val_paths is not None:
        paths[:fit_end - 1] = val_paths[:fit_end - 1]
    floor = scale_floor(y[:fit_end])
    scores = rolling_scores(paths, y, fit_end - 1, LEADS, floor=floor, window=config.calibration_window,
                            calib_start=val_start, standard_errors=True)
    return {s.lead: {"wape": s.wape, "coverage_p90": s.coverage["p90"], "coverage_p90_se": s.coverage_se["p90"],
                     "coverage_p10_p90": s.coverage["p10-p90"], "pinball": s.pinball} for s in scores}


def servegen_totals(folder: str, workers: int, config: LoadConfig) -> tuple[dict, TotalForecaster, np.ndarray]:
    series = servegen_counts(read_servegen(TRACES / "servegen" / "language" / folder), 600.0)
    counts, y = series.counts, series.total()
    fit_end = 10 * DAY
    val_start = validation_split(fit_end, config) - 1
    t0 = time.perf_counter()
    total = TotalForecaster(config=config)
    total.fit(counts[:, :fit_end], interval_s=600.0, names=series.names, workers=workers)
    fit_s = time.perf_counter() - t0
    lead = config.max_lead
    methods = {"fleetwise": (total.paths(counts, lead), total.validation_paths if total.use_bottom_up else
                             total.direct.selection.chosen.paths)}
    direct = total.direct
    filled = carry_forward(y)  # the baselines carry the last observed value over windows of no data too
    methods[f"direct ({direct.method})"] = (direct.paths(y, lead), direct.selection.chosen.paths)
    methods["persistence"] = (Persistence().paths(filled, lead), None)
    methods["seasonal_naive(1 day)"] = (SeasonalNaive(DAY).paths(filled, lead), None)
    out = {name: test_scores(p, v, y, fit_end, val_start, config) for name, (p, v) in methods.items()}
    # Windows of no data (m-mid's and m-small's totals drop from hundreds of thousands of requests to exactly 0
    # and back: a collection gap, not a quiet hour) are NaN in `y` and not scored above; scored as zero demand
    # as well, for comparison with figures that counted them.
    gaps = np.isnan(y)
    as_zero = {name: test_scores(p, v, np.nan_to_num(y), fit_end, val_start, config)
               for name, (p, v) in methods.items() if name in ("fleetwise", "persistence")} if gaps.any() else {}
    return {"method": total.method, "fit_s": fit_s, "scores": out, "gap_windows_test": int(gaps[fit_end:].sum()),
            "gap_windows_fit": int(gaps[:fit_end].sum()), "scores_gaps_as_zero": as_zero}, total, counts


def per_client(total: TotalForecaster, counts: np.ndarray) -> dict:
    fit_end = 10 * DAY
    origins = np.arange(fit_end - 1, counts.shape[1] - 1)
    ours, pers = [], []
    for child, c in zip(total.children, counts):
        actual = c[origins + 1]
        if np.nansum(actual) == 0:
            continue  # WAPE is undefined on a client silent through the whole test
        ours.append(wape(child.paths(c, 1)[origins, 0], actual))
        pers.append(wape(carry_forward(c)[origins], actual))
    ours_a, pers_a = np.array(ours), np.array(pers)
    return {"clients_scored": len(ours), "clients_silent": counts.shape[0] - len(ours),
            "median_wape": float(np.median(ours_a)), "median_wape_persistence": float(np.median(pers_a)),
            "clients_better": int(np.sum(ours_a < pers_a - 1e-12)),
            "clients_worse": int(np.sum(ours_a > pers_a + 1e-12))}


def parcae() -> dict:
    trace = read_availability(TRACES / "parcae_aws_p3" / "p3trace.csv")
    y = trace.counts(60.0).astype(float)
    scores = backtest_availability(y, (1, 12), capacity=32, first_origin=10)
    out: dict = {f"{s.method}@{s.lead}": {"mae": s.mae, "coverage_p10_p90": s.coverage_p10_p90,
                                          "pit_coverage_p10_p90": s.pit_coverage_p10_p90,
                                          "width_p10_p90": s.width_p10_p90, "coverage_adaptive": s.coverage_adaptive,
                                          "width_adaptive": s.width_adaptive} for s in scores}
    out["hindsight_bounds"] = {lead: hindsight_bounds(y, lead) for lead in (1, 12)}
    out["online_level_median_mae@12"] = online_level_median_mae(y, 12)
    return out


def young_availability(leads: tuple[int, ...] = (1, 3, 6), ages: range = range(3, 30, 3), every: int = 15) -> dict:
    """Availability forecasts from young traces (fewer resolved origins than `min_samples`, where a live controller
    spends its first hours: 2.5 h at a 300 s cron): from every `every`-th interval as a trace's start, histories of
    `ages` intervals, scored by ranked probability score at `leads`. The forecaster (its few changes mixed with
    binomial survival) beside binomial survival alone (at the same hazard) and persistence."""
    cases = {f"p3 @ {i:.0f} s": (TRACES / "parcae_aws_p3" / "p3trace.csv", i) for i in (60.0, 300.0)}
    cases |= {f"g4dn @ {i:.0f} s": (TRACES / "spotserve_aws_g4dn" / "g4dn.csv", i) for i in (60.0, 300.0)}
    sky = TRACES / "skypilot_spot_traces" / "availability" / "16-node" / "aws-08-27-2023"
    cases |= {f"skypilot {p.stem.split('_')[0]} @ 300 s": (p, 300.0) for p in sorted(sky.glob("*.json"))}
    out = {}
    for name, (path, interval) in cases.items():
        y = read_availability(path).counts(interval).astype(float)
        cap = int(y.max())
        scores: dict[str, dict[int, list[float]]] = {k: {h: [] for h in leads}
                                                     for k in ("fleetwise", "binomial_survival", "persistence")}
        for start in range(0, len(y) - max(ages) - max(leads), every):
            for age in ages:
                history = y[start:start + age + 1]
                f = AvailabilityForecaster(pool=name, capacity=cap)
                f.fit(history, interval_s=interval)
                pmf = f.distribution(max(leads)).pmf
                now = int(history[-1])
                for h in leads:
                    actual = np.array([y[start + age + h]])
                    scores["fleetwise"][h].append(float(ranked_probability_score(pmf[h - 1], actual)[0]))
                    scores["binomial_survival"][h].append(float(ranked_probability_score(f.survival_pmf(h),
                                                                                          actual)[0]))
                    scores["persistence"][h].append(float(ranked_probability_score(np.eye(cap + 1)[now], actual)[0]))
        out[name] = {k: {h: float(np.mean(v)) for h, v in by_lead.items()} for k, by_lead in scores.items()}
        out[name]["forecasts"] = len(scores["fleetwise"][leads[0]])
    return out


def online_level_median_mae(y: np.ndarray, lead: int, *, band: int = 1, min_samples: int = 5) -> float:
    """The honest counterpart of the "level" bound: at each origin, the median h-step change of the *earlier*
    origins whose count was within `band` of the count now (persistence with fewer than `min_samples`)."""
    origins = np.arange(10, len(y) - lead)
    errors = []
    for t in origins:
        past = np.arange(0, t - lead + 1)
        past = past[np.abs(y[past] - y[t]) <= band]
        point = y[t] + (np.median(y[past + lead] - y[past]) if past.size >= min_samples else 0.0)
        errors.append(abs(point - y[t + lead]))
    return float(np.mean(errors))


def hindsight_bounds(y: np.ndarray, lead: int, capacity: int = 32) -> dict[str, dict]:
    """How low MAE could go if the point forecast were the median change of each *state*, chosen with hindsight on
    the very origins scored (in-sample) or on all the others (leave-one-out). Not a forecaster: a bound on what
    conditioning on these states can give, for the doc's argument about the Parcae targets."""
    d = np.diff(y, prepend=y[0])
    sign = [np.sign(np.r_[np.zeros(j), d[:len(d) - j]]) for j in range(3)]  # sign of the change j minutes ago
    states = {"pool full": [y == capacity], "last 3 change signs, full": [*sign, y == capacity],
              "headroom (3-GPU bins), last 2 signs": [np.minimum(capacity - y, 12) // 3, sign[0], sign[1]],
              "level": [y]}
    origins = np.arange(10, len(y) - lead)
    change = y[origins + lead] - y[origins]
    out = {}
    for name, cols in states.items():
        _, group = np.unique(np.stack([c[origins] for c in cols], axis=1), axis=0, return_inverse=True)
        in_sample = loo = 0.0
        for g in np.unique(group):
            ch = change[group.ravel() == g]
            in_sample += float(np.abs(ch - np.median(ch)).sum())
            loo += sum(abs(ch[i] - (np.median(np.delete(ch, i)) if ch.size > 1 else 0.0)) for i in range(ch.size))
        out[name] = {"states": int(group.max()) + 1, "in_sample_mae": in_sample / origins.size,
                     "leave_one_out_mae": loo / origins.size}
    return out


# -- m-large +60 min: what the doc's "What the misses are made of" reports as tried ----------------------------------
def trailing_mean(x: np.ndarray, k: int) -> np.ndarray:
    return pd.Series(x).rolling(k, min_periods=1).mean().to_numpy()


def level_gaps(x: np.ndarray, ks: tuple[int, ...]) -> list[np.ndarray]:
    """Distance of the level to its trailing means over `ks` intervals, at every origin."""
    return [trailing_mean(x, k) - x for k in ks]


def pooled_features(c: np.ndarray, lead: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of one client's h-step change at every origin, in units of its trailing-day mean (the scale):
    distance of the level to its 3/6/12/36-interval and 1-day means, yesterday's change over the same h steps,
    yesterday's value at the target time, the last change."""
    n = len(c)
    scale = np.maximum(trailing_mean(c, DAY), 1.0)
    day_ago_target = np.r_[np.zeros(DAY - lead), c[: n - DAY + lead]]
    day_ago = np.r_[np.zeros(DAY), c[: n - DAY]]
    cols = level_gaps(c, (3, 6, 12, 36, DAY))
    cols += [day_ago_target - day_ago, day_ago_target - c, np.diff(c, prepend=c[0])]
    return np.stack(cols, axis=1) / scale[:, None], scale


def pooled_lad_total(counts: np.ndarray, fit_end: int, lead: int, fit_first: int = DAY + 12) -> np.ndarray:
    """A global model (one regression over all clients, the M4/M5 lesson): least absolute deviations of the
    scaled h-step change on `pooled_features`, weighted by scale so that the loss is in requests, fitted on
    origins from `fit_first` to before `fit_end`; returns the sum of the clients' forecasts from every origin."""
    import statsmodels.api as sm

    rows, targets = [], []
    for c in counts[:, :fit_end]:
        if c.any():
            x, scale = pooled_features(c, lead)
            o = np.arange(fit_first, fit_end - lead)
            rows.append(x[o] * scale[o, None])
            targets.append(c[o + lead] - c[o])
    beta = sm.QuantReg(np.concatenate(targets), np.concatenate(rows)).fit(q=0.5, max_iter=2000).params
    out = np.zeros(counts.shape[1])
    for c in counts:
        x, scale = pooled_features(c, lead)
        out += np.maximum(c + scale * (x @ beta), 0.0)
    return out


def total_features(y: np.ndarray, lead: int) -> np.ndarray:
    """Features of the total's h-step change at every origin: distance of the level to its 3/6/12/36-interval,
    1-day and 2-day means, and to the value one day before the target time."""
    day_ago_target = np.r_[np.full(DAY - lead, y[0]), y[: len(y) - DAY + lead]]
    cols = level_gaps(y, (3, 6, 12, 36, DAY, 2 * DAY)) + [day_ago_target - y]
    return np.stack(cols, axis=1)


def hindsight_lad_total(y: np.ndarray, first: int, lead: int) -> float:
    """WAPE of a least-absolute-deviations rule on `total_features` fitted on the very origins it is scored on
    (origins ≥ `first`): not a forecaster but a bound on what linear rules over the total's own history can give,
    for the doc's argument about the +60 min target."""
    import statsmodels.api as sm

    o = np.arange(first, len(y) - lead)
    x = total_features(y, lead)[o]
    beta = sm.QuantReg(y[o + lead] - y[o], x).fit(q=0.5, max_iter=5000).params
    return wape(y[o] + x @ beta, y[o + lead])


def m_large_experiments(total: TotalForecaster, counts: np.ndarray, config: LoadConfig) -> dict:
    """Candidates for the +60 min miss, each chosen on the validation origins (days 7.7–10, models fitted before
    them) and then scored on the test days: the pooled LAD model with the rule fixed in advance (leads ≥ 3 use it
    where it beats bottom-up on validation), and bottom-up shrunk towards the total's trailing mean,
    `ŷ + λ(mean_k - ŷ)`, with k and λ chosen on validation; and at the longest lead two hindsight bounds,
    `hindsight_lad_total` and the pooled model fitted on the test origins themselves."""
    y = counts.sum(axis=0)
    fit_end, val_first = 10 * DAY, validation_split(10 * DAY, config) - 1
    bottom_up = {"validation": total.validation_paths, "test": total.paths(counts, config.max_lead)}
    periods = {"validation": (val_first, fit_end), "test": (fit_end - 1, len(y))}

    def score(point: np.ndarray, period: str, lead: int) -> float:
        first, end = periods[period]
        o = np.arange(first, end - lead)
        return wape(point[o], y[o + lead])

    out = {}
    for lead in LEADS:
        bu = {p: score(bottom_up[p][:, lead - 1], p, lead) for p in periods}
        pooled = {"validation": score(pooled_lad_total(counts[:, :fit_end], val_first + 1, lead), "validation",
                                      lead), "test": score(pooled_lad_total(counts, fit_end, lead), "test", lead)}
        grid = [(k, lam) for k in (3, 6, 12, 36, DAY) for lam in np.round(np.arange(0.0, 1.01, 0.1), 1)]
        shrunk = {kl: {p: score(bottom_up[p][:, lead - 1] + kl[1] * (trailing_mean(y, kl[0])[:len(bottom_up[p])]
                                                                    - bottom_up[p][:, lead - 1]), p, lead)
                       for p in periods} for kl in grid}
        k, lam = min(grid, key=lambda kl: shrunk[kl]["validation"])
        use_pooled = lead >= 3 and pooled["validation"] < bu["validation"]
        out[lead] = {"bottom_up": bu, "pooled_lad": pooled, "shrink": {"k": k, "lambda": lam, **shrunk[(k, lam)]},
                     "rule_pooled_if_wins_validation": {"uses_pooled": use_pooled,
                                                        "test": pooled["test"] if use_pooled else bu["test"]}}
        if lead == max(LEADS):  # the missed target's lead (at +10 min bottom-up beats both classes out of sample)
            out[lead] |= {"hindsight_lad_total_test": hindsight_lad_total(y, fit_end - 1, lead),
                          "hindsight_pooled_lad_test": score(pooled_lad_total(counts, len(y), lead, fit_end - 1),
                                                             "test", lead)}
    return out


def lengths(name: str) -> dict:
    table = read_azure(TRACES / "azure_llm_2023" / f"AzureLLMInferenceTrace_{name}.csv")
    cut = int(0.8 * len(table))
    train, test = table.take(np.arange(cut)), table.take(np.arange(cut, len(table)))
    t0 = time.perf_counter()
    model = OutputLengthModel()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    y = test.output_tokens.astype(float)
    out = {"fit_s": fit_s, "test_requests": len(test), "temperature": model.temperature}
    unconditional = LengthBatch.empirical(train.output_tokens, len(test))
    for label, batch in (("conditional", model.predict(test)), ("empirical", unconditional)):
        out[label] = {
            "coverage_p90": float(np.mean(y <= batch.quantile(0.9))),
            "pinball_p90": pinball_loss(y, batch.quantile(0.9), 0.9),
            "pinball_mean_p10_p50_p90": float(np.mean([pinball_loss(y, batch.quantile(q), q)
                                                       for q in (0.1, 0.5, 0.9)])),
        }
    return out


def speed(workers: int, config: LoadConfig) -> dict:
    large = servegen_counts(read_servegen(TRACES / "servegen" / "language" / "m-large"), 600.0)
    mid = servegen_counts(read_servegen(TRACES / "servegen" / "language" / "m-mid"), 600.0)
    counts = np.concatenate([large.counts, mid.counts[: 200 - large.counts.shape[0]]])
    names = list(large.names) + list(mid.names[: 200 - large.counts.shape[0]])
    t0 = time.perf_counter()
    forecasters = fit_many(counts[:, :-1], names, interval_s=600.0, config=config, workers=workers)
    select_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f, row in zip(forecasters, counts):
        f.update(row)
        f.forecast(6, SAMPLING_LEVELS)
    refit_s = time.perf_counter() - t0
    # Baseline: the naive backtest (one statsmodels forecast call per origin) on one series, scaled to the 576
    # validation origins × 200 series that selection covers with one vectorised pass per method.
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y = counts[0]
    t0 = time.perf_counter()
    for origin in range(1439, 1439 + 24):
        ExponentialSmoothing(y[: origin + 1], trend="add", damped_trend=True).fit().forecast(12)
    naive_s = (time.perf_counter() - t0) / 24 * 576 * 200
    return {"series": len(names), "points": int(counts.shape[1]), "workers": workers, "select_s": select_s,
            "refit_s": refit_s, "naive_refit_per_origin_holt_only_s_extrapolated": naive_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="m-large only; skip m-mid, m-small and speed")
    args = parser.parse_args()
    if not TRACES.is_dir():
        sys.exit(f"traces not found at {TRACES}")
    config = LoadConfig()
    results: dict = {"config": {"load": config.__dict__, "workers": args.workers}}
    results["servegen"] = {}
    for folder in ("m-large",) if args.quick else ("m-large", "m-mid", "m-small"):
        res, total, counts = servegen_totals(folder, args.workers, config)
        results["servegen"][folder] = res
        if folder == "m-large":
            results["m_large_per_client"] = per_client(total, counts)
            results["m_large_experiments"] = m_large_experiments(total, counts, config)
    results["parcae_p3"] = parcae()
    results["young_availability"] = young_availability()
    results["lengths"] = {name: lengths(name) for name in ("conv", "code")}
    if not args.quick:
        results["speed"] = speed(args.workers, config)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "forecast_accuracy.json").write_text(json.dumps(results, indent=2, default=float))
    Console().print(summary_table(results))


def inside_probability(se: float, target: float = 0.9, half_width: float = 0.02) -> float:
    """P(a coverage estimate lands within target ± half_width) for a band whose true coverage is the target, with
    the estimate normal at standard error `se`."""
    return float(math.erf(half_width / (se * math.sqrt(2)))) if se > 0 else 1.0


def summary_table(r: dict) -> Table:
    t = Table(title="forecast_accuracy: fleetwise vs baselines (same run)", title_justify="left")
    for col in ("target", "fleetwise", "baselines", "goal", "met"):
        t.add_column(col, justify="left" if col in ("target", "baselines") else "right")

    def row(target: str, ours: float, base: str, goal: str, met: bool | None, fmt: str = "{:.1%}") -> None:
        t.add_row(target, fmt.format(ours), base, goal, "—" if met is None else "[green]yes[/]" if met else "[red]no[/]")

    for folder, res in r["servegen"].items():
        s = res["scores"]
        direct = next(k for k in s if k.startswith("direct"))
        for lead, goal in ((1, 0.12), (6, 0.21)):
            base = ", ".join(f"{k.split(' (')[0]} {s[k][lead]['wape']:.1%}"
                             for k in ("persistence", "seasonal_naive(1 day)", direct))
            ours = s["fleetwise"][lead]["wape"]
            beat = ours < s["persistence"][lead]["wape"]
            large = folder == "m-large"
            row(f"{folder} total WAPE +{10 * lead} min", ours, base, f"≤ {goal:.0%}" if large else "< persistence",
                ours <= goal if large else beat)
        cov, se = s["fleetwise"][1]["coverage_p90"], s["fleetwise"][1]["coverage_p90_se"]
        row(f"{folder} p90 coverage (+10 min)", cov, f"persistence bands {s['persistence'][1]['coverage_p90']:.1%}",
            "88–92 %", 0.88 <= cov <= 0.92)
        row("  its standard error (Newey–West: misses come in runs)", se,
            f"a p90 calibrated at exactly 90 % lands in 88–92 % with probability {inside_probability(se):.0%} "
            f"at this error", "report", None)
        if res.get("scores_gaps_as_zero"):
            g = res["scores_gaps_as_zero"]
            row(f"  {folder} with its {res['gap_windows_test']} test windows of no data scored as zero demand: p90 "
                f"coverage, WAPE +10 / +60 min", g["fleetwise"][1]["coverage_p90"],
                f"WAPE {g['fleetwise'][1]['wape']:.1%} / {g['fleetwise'][6]['wape']:.1%}; persistence "
                f"{g['persistence'][1]['coverage_p90']:.1%}, WAPE {g['persistence'][1]['wape']:.1%} / "
                f"{g['persistence'][6]['wape']:.1%}", "report", None)
    pc = r["m_large_per_client"]
    row(f"m-large per-client median WAPE +10 min ({pc['clients_scored']} clients)", pc["median_wape"],
        f"persistence {pc['median_wape_persistence']:.1%}", "< persistence",
        pc["median_wape"] < pc["median_wape_persistence"])
    for lead, e in r.get("m_large_experiments", {}).items():
        sh, rule = e["shrink"], e["rule_pooled_if_wins_validation"]
        row(f"  experiment m-large +{10 * int(lead)} min: pooled LAD if it wins validation (leads ≥ 3)", rule["test"],
            f"validation: bottom-up {e['bottom_up']['validation']:.1%}, pooled {e['pooled_lad']['validation']:.1%}; "
            f"test: pooled {e['pooled_lad']['test']:.1%}; shrink to trailing mean (k={sh['k']}, λ={sh['lambda']} "
            f"from validation) {sh['test']:.1%}", "report", None)
        if "hindsight_lad_total_test" in e:
            row(f"  bounds: LAD fitted on the test days themselves, +{10 * int(lead)} min",
                min(e["hindsight_lad_total_test"], e["hindsight_pooled_lad_test"]),
                f"on the total's trailing means {e['hindsight_lad_total_test']:.1%}; pooled over clients "
                f"{e['hindsight_pooled_lad_test']:.1%} (in-sample: no rule of either class does better)", "report",
                None)
    p = r["parcae_p3"]
    for lead, goal in ((1, 0.45), (12, 3.3)):
        ours = p[f"empirical_change@{lead}"]["mae"]
        base = f"persistence {p[f'persistence@{lead}']['mae']:.3f}, ARIMA(1,1,0) {p[f'arima(1,1,0)@{lead}']['mae']:.3f}"
        row(f"Parcae p3 MAE +{lead} min (nodes)", ours, base, f"≤ {goal}", ours <= goal, "{:.3f}")
        bounds = p["hindsight_bounds"][lead]
        best = min(bounds, key=lambda k: bounds[k]["leave_one_out_mae"])
        row(f"  bound: per-state median with hindsight, +{lead} min", bounds[best]["leave_one_out_mae"],
            f"leave-one-out, best of {len(bounds)} state sets ({best}); in-sample "
            f"{bounds[best]['in_sample_mae']:.3f}", "report", None, "{:.3f}")
        if lead == 12:
            row("  honest counterpart: online median change at the same level (±1), +12 min",
                p["online_level_median_mae@12"], "origins before each forecast only", "report", None, "{:.3f}")
        ours = p[f"empirical_change@{lead}"]
        cov = ours["coverage_adaptive"]
        row(f"Parcae p3 80 % interval coverage +{lead} min (adaptive band)", cov,
            f"p10–p90 band {ours['coverage_p10_p90']:.1%}; mean width {ours['width_adaptive']:.2f} against "
            f"{ours['width_p10_p90']:.2f} GPUs", "78–82 %", 0.78 <= cov <= 0.82)
        row(f"  calibration: randomised-PIT share in [0.1, 0.9], +{lead} min",
            p[f"empirical_change@{lead}"]["pit_coverage_p10_p90"], "not a band: 80 % if the distribution is calibrated",
            "report", None)
    for name, res in r.get("young_availability", {}).items():
        leads = sorted(int(h) for h in res["fleetwise"])
        ours = ", ".join(f"{res['fleetwise'][h]:.3f}" for h in leads)
        binomial = ", ".join(f"{res['binomial_survival'][h]:.3f}" for h in leads)
        persistence = ", ".join(f"{res['persistence'][h]:.3f}" for h in leads)
        t.add_row(f"young availability trace {name}: RPS at +{', +'.join(map(str, leads))} intervals "
                  f"({res['forecasts']} forecasts)", ours, f"binomial survival {binomial}; persistence {persistence}",
                  "report", "[green]yes[/]" if all(res["fleetwise"][h] <= res["binomial_survival"][h] for h in leads)
                  else "[red]no[/]")
    for name, res in r["lengths"].items():
        c, e = res["conditional"], res["empirical"]
        row(f"Azure {name} output p90 coverage (held-out)", c["coverage_p90"], f"empirical {e['coverage_p90']:.1%}",
            "88–92 %", 0.88 <= c["coverage_p90"] <= 0.92)
        row(f"Azure {name} pinball loss (mean of p10/p50/p90, tokens)", c["pinball_mean_p10_p50_p90"],
            f"empirical {e['pinball_mean_p10_p50_p90']:.2f}", "report", True, "{:.2f}")
    if "speed" in r:
        sp = r["speed"]
        row(f"select {sp['series']} series × {sp['points']} points ({sp['workers']} workers), s", sp["select_s"],
            f"naive per-origin refit (Holt only, extrapolated) "
            f"{sp['naive_refit_per_origin_holt_only_s_extrapolated']:,.0f} s",
            "≤ 60 s", sp["select_s"] <= 60, "{:.1f}")
        row(f"refit + forecast {sp['series']} series (replanning cycle), s", sp["refit_s"], "–", "≤ 2 s",
            sp["refit_s"] <= 2, "{:.2f}")
    return t


if __name__ == "__main__":
    main()
