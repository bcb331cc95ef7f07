"""Expected outcome of a placement per scenario and overall, and the scenario set a planner falls back to.

Attainment of a class is the share of its demand served within SLO capacity; goodput counts the output tokens of
online requests served; GPU-hours and cost are the GPUs the placement holds over the horizon.
"""

from __future__ import annotations

import numpy as np

from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.plan import Expected, Outcome, ScenarioOutcome
from core.state import FleetState
from optimizers.placement.greedy import PlacementDecision
from optimizers.placement.problem import PlacementProblem

# Observed-load fallback: demand at 0.7×, 1× and 1.4× the recent rate (weights ¼, ½, ¼), a spread wide enough to
# buy headroom for a doubling within the horizon, used when no forecaster supplies scenarios.
FALLBACK_LEVELS = ((0.7, 0.25), (1.0, 0.5), (1.4, 0.25))


def expected_outcome(problem: PlacementProblem, decision: PlacementDecision, unmet_rps: np.ndarray,
                     gpus_used: np.ndarray) -> Expected:
    """Per-scenario and probability-weighted outcome of a placement (`unmet_rps` is (S, M, C))."""
    hours = problem.horizon_s / 3600
    gpu_hours = float(gpus_used.sum() * hours)
    cost = float(sum(p.price_per_hour * n for p, n in zip(problem.pools, gpus_used)) * hours)
    scenarios = []
    for s in range(problem.num_scenarios):
        demand = problem.demand_rps[s]
        per_class = {}
        for c, cls in enumerate(problem.classes):
            total = demand[:, c].sum()
            per_class[cls.name] = float(1 - unmet_rps[s, :, c].sum() / total) if total > 0 else 1.0
        # The solver's unmet demand can exceed the demand by round-off (zero demand, 1e-12 unmet): serve ≥ 0.
        served = np.maximum(demand - unmet_rps[s], 0.0)[:, problem.online_mask].sum(axis=1)
        total = demand.sum()
        scenarios.append(ScenarioOutcome(
            scenario=s, weight=float(problem.weights[s]),
            slo_attainment=float(np.clip(1 - unmet_rps[s].sum() / total, 0, 1)) if total > 0 else 1.0,
            per_class={k: float(np.clip(v, 0, 1)) for k, v in per_class.items()},
            goodput_tokens_per_s=float(served @ problem.mean_output_tokens), gpu_hours=gpu_hours, cost_usd=cost,
            unmet_requests_per_s=max(0.0, float(unmet_rps[s].sum()))))  # solver round-off can dip below 0
    w = problem.weights
    overall = Outcome(
        slo_attainment=float(sum(x.slo_attainment * wi for x, wi in zip(scenarios, w))),
        per_class={c.name: float(sum(x.per_class[c.name] * wi for x, wi in zip(scenarios, w)))
                   for c in problem.classes},
        goodput_tokens_per_s=float(sum(x.goodput_tokens_per_s * wi for x, wi in zip(scenarios, w))),
        gpu_hours=gpu_hours, cost_usd=cost,
        unmet_requests_per_s=max(0.0, float(sum(x.unmet_requests_per_s * wi for x, wi in zip(scenarios, w)))))
    return Expected(overall=overall, scenarios=tuple(scenarios))


def scenarios_from_load(fleet: FleetSpec, state: FleetState, interval_s: float = 300.0) -> ScenarioSet:
    """Three scenarios around the observed rates (`FALLBACK_LEVELS`), the fleet's SLO mix, observed lengths."""
    models = tuple(fleet.model_names)
    rate = np.array([state.load[m].request_rate_per_s if m in state.load else 0.0 for m in models])
    prompt = np.array([state.load[m].prompt_tokens_mean if m in state.load and state.load[m].prompt_tokens_mean > 0
                       else 1024.0 for m in models])
    output = np.array([state.load[m].output_tokens_mean if m in state.load and state.load[m].output_tokens_mean > 0
                       else 256.0 for m in models])
    levels = np.array([lv for lv, _ in FALLBACK_LEVELS])
    demand = levels[:, None, None] * rate[None, :, None]
    pools = tuple(p.name for p in fleet.pools)
    healthy = set(state.healthy_gpu_ids) if state.workers else None
    avail = np.array([[sum(1 for g in p.gpu_ids() if healthy is None or g in healthy)] for p in fleet.pools], float)
    return ScenarioSet(
        start_s=state.time_s, interval_s=interval_s, models=models, pools=pools,
        slo_classes=tuple(c.name for c in fleet.slo_classes), weights=np.array([w for _, w in FALLBACK_LEVELS]),
        seeds=np.zeros(len(FALLBACK_LEVELS), np.int64), demand_rps=demand,
        available_gpus=np.repeat(avail[None], len(FALLBACK_LEVELS), axis=0), class_share=class_mix(fleet),
        mean_prompt_tokens=prompt, mean_output_tokens=output)


def class_mix(fleet: FleetSpec) -> np.ndarray:
    """(M, C) SLO class shares from the fleet's workload mix (default mix, per-model overrides)."""
    names = [c.name for c in fleet.slo_classes]
    default = fleet.spec.workload.default_slo_mix or {names[0]: 1.0}
    per_model = {m.model: m.slo_classes for m in fleet.spec.workload.mix if m.slo_classes}
    out = np.zeros((len(fleet.models), len(names)))
    for i, model in enumerate(fleet.models):
        mix = per_model.get(model.name, default)
        out[i] = [mix.get(n, 0.0) for n in names]
        out[i] = out[i] / out[i].sum() if out[i].sum() > 0 else np.eye(len(names))[0]
    return out
