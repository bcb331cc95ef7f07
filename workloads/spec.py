"""Workload specs and `load_workload`, the one entry point that turns any workload source into a `RequestTable`.

A workload YAML (`apiVersion: fleetwise/v1`, `kind: Workload`) names a source — a trace (Azure CSV, Mooncake
JSONL, canonical CSV, a ServeGen folder or a rate profile; paths relative to the YAML file) or a synthetic
generator — and the transforms applied to it, always in this order: time slice → rate scale → models → SLO
classes.

```yaml
apiVersion: fleetwise/v1
kind: Workload
metadata: {name: azure-conv-small}
spec:
  fleet: ../small-hetero.yaml          # optional: the fleet to map onto when the caller passes none
  source:
    trace: {path: ../../../shared/data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv}
  slice: {start_s: 0, end_s: 1800}
  rate_scale: 1.5
  models: {mode: split, zipf_exponent: 1.0}   # every request to a fleet model, by Zipf popularity
  slo: {}                                      # classes from the fleet's mix
```

With a fleet (passed in, or named by `spec.fleet`), traffic always ends on the fleet's models and classes: if the
spec says nothing, a single-model trace is split over the fleet's models by `fleet_model_shares`, a multi-model
trace is mapped onto them by rank, and classes are drawn from the fleet's mix. Unknown fields are rejected and
every error names the YAML path and line (`core.yamlspec`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import InputError
from core.fleet import FleetSpec, Metadata, cross_error, load_fleet
from core.requests import MAX_TOKENS, RequestTable, max_requests
from core.yamlspec import load_yaml_model
from workloads.formats import detect_format, read_trace
from workloads.lengths import AZURE_CONV_LENGTHS, EmpiricalLengths, LengthModel, LognormalLengths
from workloads.rates import DEFAULT_INTERVAL_S, read_rate_profile, synthesize_profile
from workloads.servegen import read_servegen, synthesize
from workloads.synth import (
    assign_slo_classes,
    assign_slo_mix,
    fleet_model_shares,
    map_by_rank,
    rename_models,
    scale_rate,
    split_by_shares,
    split_models,
    time_slice,
    zipf_shares,
)
from workloads.synthetic import synthesize_rates

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # a .inf or .nan is a typo, never a value
Progress = Callable[[int, int], None]
Positive = Annotated[float, Field(gt=0)]
Name = Annotated[str, Field(min_length=1)]  # model and class names: an empty one would be an empty CSV field
MAX_DURATION_S = 366 * 86400.0  # a year: arrivals are merged at microsecond ticks in 64-bit keys
MAX_SPLIT_MODELS = 10_000  # models a split creates (as ModelSpec.copies allows per fleet entry)
NOT_THE_FLEETS = "is not the fleet's"  # the problem of a workload's model or class the fleet lacks


class Lognormal(BaseModel):
    """A clipped lognormal token-count distribution."""

    model_config = _STRICT
    median_tokens: Positive
    sigma: Annotated[float, Field(ge=0, le=5)] = Field(default=1.0, description="Standard deviation of log tokens.")
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] = Field(
        default=16384, description="Draws are clipped to [1, max].")


class LengthsSpec(BaseModel):
    """Where lengths come from: a trace whose (prompt, output) pairs are resampled, or two lognormals."""

    model_config = _STRICT
    trace: str | None = Field(default=None, description="Trace file (relative to the YAML) to resample from.")
    prompt: Lognormal | None = None
    output: Lognormal | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> LengthsSpec:
        if self.trace is not None and (self.prompt or self.output):
            raise ValueError("give either 'trace' or 'prompt' and 'output', not both")
        if self.trace is None and (self.prompt is None) != (self.output is None):
            raise ValueError("lognormal lengths need both 'prompt' and 'output'")
        return self


class TraceSource(BaseModel):
    """A recorded trace. ServeGen folders and rate profiles hold rates, not requests: they are turned into requests
    by `workloads.servegen.synthesize` and `workloads.rates.synthesize_profile`."""

    model_config = _STRICT
    path: str = Field(description="Trace file, rate profile or ServeGen folder, relative to the YAML file.")
    format: Literal["auto", "azure", "mooncake", "canonical", "servegen", "rates"] = "auto"
    model: Name | None = Field(default=None, description="Model name for single-model traces (Azure, Mooncake, "
                                                         "rate profiles).")
    per_client: bool = Field(default=True, description="ServeGen: one model per client (else one per folder).")
    model_prefix: str | None = Field(default=None, description="ServeGen: model name prefix (default: folder).")
    lengths: LengthsSpec | None = Field(default=None, description="ServeGen, rate profiles: lengths (default: "
                                                                  "Azure conv fit).")
    interval_s: Positive | None = Field(default=None, description="Rate profile: seconds per rate (default 60).")
    cv: Positive | None = Field(default=None, description="Rate profile: inter-arrival CV inside each interval "
                                                          "(default 1, Poisson; > 1 bursty).")


class ModelRate(BaseModel):
    model_config = _STRICT
    model: Annotated[str, Field(min_length=1)]
    rate_per_s: Annotated[float, Field(ge=0)]
    cv: Positive | None = Field(default=None, description="Inter-arrival CV for this model (default: source cv).")


class SyntheticSource(BaseModel):
    """Gamma renewal arrivals per model: explicit rates, or a total rate spread by Zipf / fleet shares."""

    model_config = _STRICT
    duration_s: Annotated[float, Field(gt=0, le=MAX_DURATION_S)]
    models: tuple[ModelRate, ...] = ()
    total_rate_per_s: Positive | None = None
    num_models: Annotated[int, Field(ge=1, le=MAX_SPLIT_MODELS)] | None = Field(
        default=None, description="With total_rate_per_s: the fleet's first N models (or model-0 … model-N-1).")
    zipf_exponent: Annotated[float, Field(ge=0, le=5)] | None = Field(
        default=None, description="With total_rate_per_s: popularity law (default: the fleet's shares).")
    cv: Positive = Field(default=1.0, description="Inter-arrival CV (1: Poisson; > 1: bursty).")
    lengths: LengthsSpec = LengthsSpec()

    @model_validator(mode="after")
    def _one_rate(self) -> SyntheticSource:
        if bool(self.models) == (self.total_rate_per_s is not None):
            raise cross_error("spec.source.synthetic", "models/total_rate_per_s",
                              "give either 'models' (per-model rates) or 'total_rate_per_s'")
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            if m.model in seen:
                raise cross_error(f"spec.source.synthetic.models[{i}].model", m.model,
                                  "each model once (its rate would silently replace the first)")
            seen.add(m.model)
        total = self.total_rate_per_s or sum(m.rate_per_s for m in self.models)
        if total * self.duration_s > (limit := max_requests()):
            raise cross_error("spec.source.synthetic", f"{total:g} requests/s × {self.duration_s:g} s",
                              f"at most {limit:,} requests in all on this machine (rate × duration)")
        return self


class Source(BaseModel):
    model_config = _STRICT
    trace: TraceSource | None = None
    synthetic: SyntheticSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        if (self.trace is None) == (self.synthetic is None):
            raise cross_error("spec.source", "trace/synthetic", "give exactly one of 'trace' or 'synthetic'")
        return self


class SliceSpec(BaseModel):
    model_config = _STRICT
    start_s: Annotated[float, Field(ge=0)] = 0.0
    end_s: Annotated[float, Field(gt=0, allow_inf_nan=True)] | None = None  # .inf: to the end, as when omitted

    @model_validator(mode="after")
    def _order(self) -> SliceSpec:
        if self.end_s is not None and self.end_s <= self.start_s:
            raise cross_error("spec.slice.end_s", self.end_s, f"must be greater than start_s ({self.start_s:g})")
        return self


class ModelMap(BaseModel):
    """How traffic lands on models. `split`: every request to a target drawn by popularity; `rank`: whole
    source streams to targets, busiest first; `rename`: explicit source → target names."""

    model_config = _STRICT
    mode: Literal["split", "rank", "rename"]
    to: tuple[Name, ...] | None = Field(default=None, min_length=1, max_length=MAX_SPLIT_MODELS,
                                        description="Target names (default: the fleet's models).")
    num_models: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Use the first N targets.")
    zipf_exponent: Annotated[float, Field(ge=0, le=5)] | None = Field(
        default=None, description="split: popularity law (default: the fleet's shares, else 1.0).")
    rename: dict[str, Name] = {}

    @field_validator("to")
    @classmethod
    def _distinct(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        seen: set[str] = set()
        for name in names or ():
            if name in seen:
                raise ValueError(f"each target model once ({name!r} appears twice)")
            seen.add(name)
        return names


class SLOAssign(BaseModel):
    model_config = _STRICT
    mix: dict[Name, Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="Fraction of requests per class (default: the fleet's mix).")


class WorkloadBody(BaseModel):
    model_config = _STRICT
    fleet: str | None = Field(default=None, description="Fleet YAML (relative) used when the caller gives none.")
    seed: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Overrides the caller's seed.")
    source: Source
    slice: SliceSpec | None = None
    rate_scale: Positive = 1.0
    models: ModelMap | None = None
    slo: SLOAssign | None = None


class WorkloadSpec(BaseModel):
    model_config = _STRICT
    apiVersion: Literal["fleetwise/v1"]
    kind: Literal["Workload"]
    metadata: Metadata
    spec: WorkloadBody


def load_workload_spec(path: str | Path) -> WorkloadSpec:
    """Read and validate a workload YAML; errors name the file, line, YAML path, value and what is allowed."""
    return load_yaml_model(WorkloadSpec, path)


def load_workload(
    source: str | Path, *, fleet: FleetSpec | None = None, seed: int = 0, on_progress: Progress | None = None
) -> RequestTable:
    """Any workload source as a `RequestTable`: a workload YAML, a trace file (format detected from extension and
    header), a ServeGen folder (one model per client) or a rate profile (per-minute rates, Poisson within each
    minute, one model named after the file); the last two with lengths from the Azure conversation fit.

    With `fleet`, models and SLO classes are mapped onto the fleet's (see the module docstring). Deterministic
    for a given source, fleet and seed. `on_progress(done, total)` reports ServeGen synthesis progress.
    """
    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml"):
        return build_workload(load_workload_spec(path), base_dir=path.parent, fleet=fleet, seed=seed,
                              on_progress=on_progress)
    fmt = detect_format(path)
    if fmt == "servegen":
        table = synthesize(read_servegen(path), lengths=AZURE_CONV_LENGTHS, seed=_stage_seed(seed, 0),
                           on_progress=on_progress)
    elif fmt == "rates":
        table = synthesize_profile(read_rate_profile(path), lengths=AZURE_CONV_LENGTHS, seed=_stage_seed(seed, 0))
    else:
        table = read_trace(path)
    return _onto_fleet(table, None, None, fleet, seed) if fleet is not None else table


def build_workload(
    spec: WorkloadSpec, *, base_dir: Path, fleet: FleetSpec | None = None, seed: int = 0,
    on_progress: Progress | None = None,
) -> RequestTable:
    """Run a validated spec: source → slice → rate scale → models → SLO classes (relative paths from base_dir)."""
    body = spec.spec
    seed = body.seed if body.seed is not None else seed
    if fleet is None and body.fleet is not None:
        fleet = load_fleet(base_dir / body.fleet)
    trace = body.source.trace
    fmt = None if trace is None else (detect_format(base_dir / trace.path) if trace.format == "auto" else trace.format)
    if trace is not None:
        _check_trace_fields(trace, fmt)
    if trace is not None and fmt == "servegen":
        table = _from_servegen(trace, body, base_dir, seed, on_progress)
    else:
        if trace is not None and fmt == "rates":
            lengths = _lengths(trace.lengths, base_dir) if trace.lengths else AZURE_CONV_LENGTHS
            profile = read_rate_profile(base_dir / trace.path, interval_s=trace.interval_s or DEFAULT_INTERVAL_S)
            table = synthesize_profile(profile, lengths=lengths, seed=_stage_seed(seed, 0), model=trace.model,
                                       cv=trace.cv or 1.0)
        elif trace is not None:
            table = read_trace(base_dir / trace.path, format=fmt, model=trace.model)  # type: ignore[arg-type]
        else:
            assert body.source.synthetic is not None
            table = _from_synthetic(body.source.synthetic, fleet, base_dir, seed)
        if body.slice is not None:
            table = time_slice(table, body.slice.start_s, body.slice.end_s if body.slice.end_s else np.inf)
        if body.rate_scale != 1:
            table = scale_rate(table, body.rate_scale, seed=_stage_seed(seed, 1))
    return _onto_fleet(table, body.models, body.slo, fleet, seed)


# Fields of `TraceSource` that only some formats read: given for another, they would be silently ignored.
_FORMAT_FIELDS = {"per_client": ("servegen",), "model_prefix": ("servegen",), "lengths": ("servegen", "rates"),
                  "interval_s": ("rates",), "cv": ("rates",)}


def _check_trace_fields(trace: TraceSource, fmt: str) -> None:
    for name, formats in _FORMAT_FIELDS.items():
        if name in trace.model_fields_set and fmt not in formats:
            raise InputError(f"spec.source.trace.{name}", getattr(trace, name),
                             f"only for a {' or '.join(formats)} source (this trace is {fmt})")


def _from_servegen(
    src: TraceSource, body: WorkloadBody, base_dir: Path, seed: int, on_progress: Progress | None
) -> RequestTable:
    """Slice and scale the rate series before synthesis: far cheaper than synthesising everything first."""
    lengths = _lengths(src.lengths, base_dir) if src.lengths else AZURE_CONV_LENGTHS
    return synthesize(
        read_servegen(base_dir / src.path), lengths=lengths, per_client=src.per_client, seed=_stage_seed(seed, 0),
        start_s=body.slice.start_s if body.slice else None, end_s=body.slice.end_s if body.slice else None,
        rate_scale=body.rate_scale, model_prefix=src.model_prefix, on_progress=on_progress,
    )


def _from_synthetic(src: SyntheticSource, fleet: FleetSpec | None, base_dir: Path, seed: int) -> RequestTable:
    if src.models:
        rates = {m.model: m.rate_per_s for m in src.models}
        cvs = {m.model: m.cv or src.cv for m in src.models}
    else:
        assert src.total_rate_per_s is not None
        shares = _synthetic_shares(src, fleet)
        rates = {name: src.total_rate_per_s * share for name, share in shares.items()}
        cvs = dict.fromkeys(rates, src.cv)
    return synthesize_rates(rates, duration_s=src.duration_s, lengths=_lengths(src.lengths, base_dir),
                            seed=_stage_seed(seed, 0), cv=cvs)


def _synthetic_shares(src: SyntheticSource, fleet: FleetSpec | None) -> dict[str, float]:
    if fleet is not None and src.num_models is None and src.zipf_exponent is None:
        return fleet_model_shares(fleet)
    names = fleet.model_names if fleet is not None else [f"model-{i}" for i in range(src.num_models or 1)]
    names = names[: src.num_models] if src.num_models else names
    exponent = src.zipf_exponent if src.zipf_exponent is not None else (
        fleet.spec.workload.zipf_exponent if fleet is not None else 1.0)
    return dict(zip(names, zipf_shares(len(names), exponent), strict=True))


def _lengths(spec: LengthsSpec, base_dir: Path) -> LengthModel:
    if spec.trace is not None:
        return EmpiricalLengths.from_table(read_trace(base_dir / spec.trace))
    if spec.prompt is None or spec.output is None:
        return AZURE_CONV_LENGTHS
    return LognormalLengths(spec.prompt.median_tokens, spec.prompt.sigma, spec.output.median_tokens,
                            spec.output.sigma, spec.prompt.max_tokens, spec.output.max_tokens)


def _onto_fleet(
    table: RequestTable, models: ModelMap | None, slo: SLOAssign | None, fleet: FleetSpec | None, seed: int
) -> RequestTable:
    """Apply the model mapping and SLO assignment; with a fleet, make sure every model and class is the fleet's."""
    if models is not None:
        table = _map_models(table, models, fleet, seed)
    elif fleet is not None and not set(table.model_names) <= set(fleet.model_names):
        table = _auto_map(table, fleet, seed)
    if slo is not None and slo.mix is None and fleet is None:
        raise InputError("spec.slo", {}, "a 'mix' of SLO classes, or a fleet whose mix to use")
    if slo is not None and slo.mix is not None:
        table = assign_slo_mix(table, slo.mix, seed=_stage_seed(seed, 3))
    elif fleet is not None and (slo is not None or not set(table.slo_names) <= {c.name for c in fleet.slo_classes}):
        table = assign_slo_classes(table, fleet, seed=_stage_seed(seed, 3))
    return _on_fleet_names(table, fleet) if fleet is not None else table


def _map_models(table: RequestTable, spec: ModelMap, fleet: FleetSpec | None, seed: int) -> RequestTable:
    if spec.mode == "rename":
        return rename_models(table, spec.rename)
    if spec.to is None and fleet is None:
        raise InputError("spec.models.to", None, "target model names (or a fleet to map onto)")
    targets = list(spec.to) if spec.to is not None else fleet.model_names  # type: ignore[union-attr]
    targets = targets[: spec.num_models] if spec.num_models else targets
    if spec.mode == "rank":
        return map_by_rank(table, targets)
    if fleet is not None and spec.to is None and spec.num_models is None and spec.zipf_exponent is None:
        return split_by_shares(table, fleet_model_shares(fleet), seed=_stage_seed(seed, 2))
    exponent = spec.zipf_exponent if spec.zipf_exponent is not None else (
        fleet.spec.workload.zipf_exponent if fleet is not None else 1.0)
    return split_models(table, targets, zipf_exponent=exponent, seed=_stage_seed(seed, 2))


def _auto_map(table: RequestTable, fleet: FleetSpec, seed: int) -> RequestTable:
    """One source model: split by the fleet's shares. Several: whole streams onto the fleet's models by rank
    (busiest stream → the model with the largest share)."""
    shares = fleet_model_shares(fleet)
    if len(table.model_names) == 1:
        return split_by_shares(table, shares, seed=_stage_seed(seed, 2))
    return map_by_rank(table, sorted(shares, key=lambda name: -shares[name]))


def _on_fleet_names(table: RequestTable, fleet: FleetSpec) -> RequestTable:
    """Check every model and class is the fleet's, and use the fleet's dictionaries (all its models and classes,
    in fleet order), so indices mean the same in every table built for one fleet."""
    models, classes = fleet.model_names, [c.name for c in fleet.slo_classes]
    for kind, names, known in (("model", table.model_names, models), ("slo_class", table.slo_names, classes)):
        stray = [n for n in names if n not in set(known)]
        if stray:
            shown = ", ".join(known[:12]) + (" …" if len(known) > 12 else "")
            raise InputError(kind, stray[0], f"a {kind} of fleet {fleet.name!r} ({shown})",
                             problem=f"{stray[0]!r} {NOT_THE_FLEETS}")
    model_pos = np.asarray([models.index(n) for n in table.model_names], np.int32)
    class_pos = np.asarray([classes.index(n) for n in table.slo_names], np.int16)
    return table.with_labels(model_idx=model_pos[table.model_idx], model_names=models,
                             slo_idx=class_pos[table.slo_idx], slo_names=classes)


def _stage_seed(seed: int, stage: int) -> int:
    """Independent seeds for the stages of one workload (synthesis, rate scaling, model split, SLO draw)."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])

