"""The fleet spec: GPU pools, served models, SLO classes and the workload mix, loaded from YAML.

```yaml
apiVersion: fleetwise/v1
kind: Fleet
metadata: {name: small-hetero}
spec:
  memory: {utilization: 0.90, reserve_gib: 1.0}
  pools:
    - {name: h100, gpu: H100-SXM, count: 8, gpus_per_node: 8}
    - {name: l4-spot, gpu: L4, count: 4, gpus_per_node: 1, spot: true}
  models:
    - {name: chat-8b, arch: Llama-3.1-8B, tp_options: [1, 2]}
    - {name: "tail-{i:02d}", arch: Llama-3.2-3B, copies: 24}   # tail-00 … tail-23
  slo_classes:
    - {name: interactive, ttft_s: 0.5, tpot_s: 0.05, priority: 0}
    - {name: batch, online: false, priority: 9}
  workload:
    default_slo_mix: {interactive: 0.8, batch: 0.2}
    mix: [{model: chat-8b, share: 0.5}]
```

Unknown fields are rejected; every error names its YAML path, the value and what is allowed (`load_fleet`).
`FleetSpec.models` is the expanded list of served models (templates with `copies` unrolled); `spec.models` is the
list as written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.catalog import GIB, GPU_CATALOG, MODEL_CATALOG, GPUType, ModelArch

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # a .inf or .nan is a typo, never a value
Fraction = Annotated[float, Field(ge=0, le=1)]
# Far beyond any real fleet; a larger count is a typo (every GPU is listed: ids, simulated workers, planner
# variables, so 1e9 would exhaust the controller's memory).
MAX_POOL_GPUS = MAX_FLEET_GPUS = 100_000


class MemoryPolicy(BaseModel):
    """How much of each GPU the serving engine may use."""

    model_config = _STRICT
    utilization: Annotated[float, Field(gt=0.1, le=1.0)] = Field(
        default=0.90, description="Fraction of device memory given to weights + KV cache."
    )
    reserve_gib: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="Per-GPU memory kept for activations, CUDA graphs and fragmentation."
    )


class PoolSpec(BaseModel):
    """A set of identical GPUs. GPU ids are `<pool>/<index>`; TP groups never span nodes."""

    model_config = _STRICT
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    gpu: GPUType = Field(description="Catalog name (e.g. 'H100-SXM') or an inline GPU type.")
    count: Annotated[int, Field(ge=0, le=MAX_POOL_GPUS)] = Field(description="GPUs in the pool.")
    gpus_per_node: Annotated[int, Field(ge=1, le=16)] = 8
    spot: bool = Field(default=False, description="Preemptible (spot/harvested) capacity.")
    price_per_hour: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Overrides the GPU type's hourly price for this pool."
    )
    availability_trace: str | None = Field(
        default=None, description="Spot pools: add/remove event trace (path relative to the fleet file)."
    )
    host_memory_gib: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Host (CPU) memory of one node, for weights kept warm and KV copied out of its "
        "GPUs; default: twice the GPU memory of the node's GPUs."
    )

    @field_validator("gpu", mode="before")
    @classmethod
    def _resolve_gpu(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in GPU_CATALOG:
                raise ValueError(f"unknown GPU type; catalog has {', '.join(GPU_CATALOG)} (or give one inline)")
            return GPU_CATALOG[value]
        return value

    @property
    def hourly_price(self) -> float:
        return self.gpu.price_per_hour if self.price_per_hour is None else self.price_per_hour

    @property
    def host_memory_gib_per_gpu(self) -> float:
        """Each GPU's share of its node's host memory (`host_memory_gib`, default 2× its own memory)."""
        if self.host_memory_gib is None:
            return 2.0 * self.gpu.memory_gib
        return self.host_memory_gib / self.gpus_per_node

    @property
    def num_nodes(self) -> int:
        return math.ceil(self.count / self.gpus_per_node) if self.count else 0

    def gpu_ids(self) -> list[str]:
        return [f"{self.name}/{i}" for i in range(self.count)]

    def node_of(self, index: int) -> int:
        return index // self.gpus_per_node


class ModelSpec(BaseModel):
    """A served model as written in YAML; `copies > 1` makes a template whose name contains `{i}`."""

    model_config = _STRICT
    name: Annotated[str, Field(min_length=1)]
    arch: ModelArch | None = Field(
        default=None, description="Catalog name or inline architecture; defaults to the catalog entry `name`."
    )
    tp_options: tuple[Annotated[int, Field(ge=1, le=16)], ...] | None = Field(
        default=None, description="TP degrees the planner may use; defaults to every degree the heads allow (≤ 8)."
    )
    max_context_tokens: Annotated[int, Field(ge=16)] | None = Field(
        default=None, description="Serving context limit; defaults to the architecture's."
    )
    copies: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=1, description="Expand into this many models; the name must then contain '{i}'."
    )

    @field_validator("arch", mode="before")
    @classmethod
    def _resolve_arch(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in MODEL_CATALOG:
                raise ValueError(f"unknown model architecture; catalog has {', '.join(MODEL_CATALOG)}")
            return MODEL_CATALOG[value]
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.arch is None and self.name not in MODEL_CATALOG:
            raise ValueError(
                f"model {self.name!r} is not in the catalog, so 'arch' is required "
                f"(catalog: {', '.join(MODEL_CATALOG)})"
            )
        if self.copies > 1 and "{i" not in self.name:
            raise ValueError("a model with copies > 1 needs '{i}' in its name, e.g. 'tail-{i:03d}'")
        return self

    @property
    def resolved_arch(self) -> ModelArch:
        return self.arch if self.arch is not None else MODEL_CATALOG[self.name]

    def names(self) -> list[str]:
        if self.copies == 1 and "{i" not in self.name:
            return [self.name]
        return [self.name.format(i=i) for i in range(self.copies)]


class SLOClass(BaseModel):
    """A service class. Online classes have TTFT and TPOT targets; offline ones are throughput work."""

    model_config = _STRICT
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    ttft_s: Annotated[float, Field(gt=0)] | None = Field(default=None, description="Time-to-first-token target.")
    tpot_s: Annotated[float, Field(gt=0)] | None = Field(default=None, description="Time-per-output-token target.")
    priority: Annotated[int, Field(ge=0, le=100)] = Field(
        default=0, description="0 is the most important; larger values yield to smaller ones."
    )
    online: bool = True

    @model_validator(mode="after")
    def _targets(self) -> SLOClass:
        if self.online and (self.ttft_s is None or self.tpot_s is None):
            raise ValueError("an online SLO class needs both ttft_s and tpot_s (or set online: false)")
        return self

    def attained(self, ttft_s: float, tpot_s: float) -> bool:
        """A request attains its SLO when both its TTFT and TPOT targets hold (offline: always)."""
        if not self.online:
            return True
        assert self.ttft_s is not None and self.tpot_s is not None
        return ttft_s <= self.ttft_s and tpot_s <= self.tpot_s


class ModelMix(BaseModel):
    model_config = _STRICT
    model: str
    share: Annotated[float, Field(ge=0)] = Field(description="Relative share of requests (normalised).")
    slo_classes: dict[str, Fraction] | None = Field(
        default=None, description="Fraction of this model's requests per SLO class; defaults to default_slo_mix."
    )


class WorkloadMix(BaseModel):
    """How synthetic or single-model traces are spread over models and SLO classes."""

    model_config = _STRICT
    default_slo_mix: dict[str, Fraction] | None = Field(
        default=None, description="Fraction of requests per SLO class; defaults to all in the first class."
    )
    mix: tuple[ModelMix, ...] = ()
    zipf_exponent: Annotated[float, Field(ge=0, le=5)] = Field(
        default=1.0, description="Popularity law for models without an explicit share."
    )


class FleetBody(BaseModel):
    model_config = _STRICT
    memory: MemoryPolicy = MemoryPolicy()
    pools: tuple[PoolSpec, ...] = Field(min_length=1)
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    slo_classes: tuple[SLOClass, ...] = Field(min_length=1)
    workload: WorkloadMix = WorkloadMix()


class Metadata(BaseModel):
    model_config = _STRICT
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    labels: dict[str, str] = {}


@dataclass(frozen=True)
class ServedModel:
    """One served model after template expansion: its name, architecture and serving limits."""

    name: str
    arch: ModelArch
    tp_options: tuple[int, ...]
    max_context_tokens: int
    spec_index: int  # index into spec.models (for error messages)

    @property
    def weight_gib(self) -> float:
        return self.arch.weight_gib

    @property
    def kv_bytes_per_token(self) -> int:
        return self.arch.kv_bytes_per_token


@dataclass(frozen=True)
class FitRow:
    """Whether a model fits a GPU type at a TP degree, and how much KV cache a replica then holds."""

    model: str
    gpu_type: str
    tp: int
    fits: bool
    weight_gib_per_gpu: float
    kv_capacity_tokens: int  # KV tokens one replica holds with the weights resident
    reason: str  # why it does not fit ('' when it fits)


class FleetSpec(BaseModel):
    """A whole fleet. Build with `load_fleet(path)` (YAML) or `FleetSpec.model_validate(dict)`."""

    model_config = _STRICT
    apiVersion: Literal["fleetwise/v1"]
    kind: Literal["Fleet"]
    metadata: Metadata
    spec: FleetBody

    @model_validator(mode="after")
    def _cross_checks(self) -> FleetSpec:
        _check_unique("spec.pools", [p.name for p in self.spec.pools])
        total = 0
        for i, pool in enumerate(self.spec.pools):
            total += pool.count
            if total > MAX_FLEET_GPUS:
                raise cross_error(f"spec.pools[{i}].count", pool.count,
                                  f"at most {MAX_FLEET_GPUS} GPUs in the whole fleet ({total} by this pool)")
        _check_unique("spec.slo_classes", [c.name for c in self.spec.slo_classes])
        names: list[str] = []
        for i, m in enumerate(self.spec.models):
            for t in m.tp_options or ():
                arch = m.resolved_arch
                if not arch.tp_allowed(t):
                    raise cross_error(
                        f"spec.models[{i}].tp_options", t,
                        f"a TP degree must divide the heads of {arch.name} ({arch.num_heads} query, "
                        f"{arch.num_kv_heads} KV): one of {list(arch.allowed_tp_degrees(16))}",
                    )
            names.extend(m.names())
        _check_unique("spec.models", names)
        classes = {c.name for c in self.spec.slo_classes}
        mix = self.spec.workload
        for where, slo_mix in [("spec.workload.default_slo_mix", mix.default_slo_mix)] + [
            (f"spec.workload.mix[{i}].slo_classes", m.slo_classes) for i, m in enumerate(mix.mix)
        ]:
            for c in slo_mix or {}:
                if c not in classes:
                    raise cross_error(where, c, f"an SLO class defined in spec.slo_classes: {', '.join(sorted(classes))}")
        known = set(names)
        for i, m in enumerate(mix.mix):
            if m.model not in known:
                raise cross_error(f"spec.workload.mix[{i}].model", m.model, "a model defined in spec.models")
        return self

    # -- views ---------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def pools(self) -> tuple[PoolSpec, ...]:
        return self.spec.pools

    @property
    def slo_classes(self) -> tuple[SLOClass, ...]:
        return self.spec.slo_classes

    @property
    def memory(self) -> MemoryPolicy:
        return self.spec.memory

    @cached_property
    def models(self) -> tuple[ServedModel, ...]:
        out = []
        for i, m in enumerate(self.spec.models):
            arch = m.resolved_arch
            tps = tuple(m.tp_options) if m.tp_options else arch.allowed_tp_degrees(8)
            ctx = m.max_context_tokens or arch.max_context_tokens
            out.extend(ServedModel(n, arch, tps, ctx, i) for n in m.names())
        return tuple(out)

    @cached_property
    def _model_index(self) -> dict[str, ServedModel]:
        return {m.name: m for m in self.models}

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def model(self, name: str) -> ServedModel:
        try:
            return self._model_index[name]
        except KeyError:
            from core.errors import NotFoundError

            raise NotFoundError("model", name, self.model_names) from None

    def pool(self, name: str) -> PoolSpec:
        for p in self.pools:
            if p.name == name:
                return p
        from core.errors import NotFoundError

        raise NotFoundError("pool", name, [p.name for p in self.pools])

    def slo_class(self, name: str) -> SLOClass:
        for c in self.slo_classes:
            if c.name == name:
                return c
        from core.errors import NotFoundError

        raise NotFoundError("SLO class", name, [c.name for c in self.slo_classes])

    @property
    def num_gpus(self) -> int:
        return sum(p.count for p in self.pools)

    def gpu_ids(self) -> list[str]:
        return [g for p in self.pools for g in p.gpu_ids()]

    def pool_of_gpu(self, gpu_id: str) -> PoolSpec:
        return self.pool(gpu_id.rsplit("/", 1)[0])

    # -- sizing --------------------------------------------------------------------------------------------------
    def usable_bytes_per_gpu(self, gpu: GPUType) -> float:
        return gpu.memory_bytes * self.memory.utilization - self.memory.reserve_gib * GIB

    def fit(self, model: ServedModel, gpu: GPUType, tp: int) -> FitRow:
        """Can one replica of `model` run on `tp` GPUs of type `gpu` with room for one full-context sequence?"""
        weight_per_gpu = model.arch.weight_bytes / tp
        free = self.usable_bytes_per_gpu(gpu) - weight_per_gpu
        kv_tokens = int(max(free, 0) // model.arch.kv_bytes_per_token_per_gpu(tp))
        reason = ""
        if free <= 0:
            reason = f"weights need {weight_per_gpu / GIB:.1f} GiB/GPU, usable is {self.usable_bytes_per_gpu(gpu) / GIB:.1f}"
        elif kv_tokens < model.max_context_tokens:
            reason = f"KV room for {kv_tokens} tokens < max context {model.max_context_tokens}"
        return FitRow(model.name, gpu.name, tp, not reason, weight_per_gpu / GIB, kv_tokens, reason)

    def fit_table(self) -> list[FitRow]:
        """Every (model, GPU type in the fleet, TP option ≤ GPUs per node) combination."""
        gpus = {p.gpu.name: (p.gpu, p.gpus_per_node) for p in self.pools}
        rows = []
        for m in self.models:
            for gpu, per_node in gpus.values():
                rows.extend(self.fit(m, gpu, tp) for tp in m.tp_options if tp <= per_node)
        return rows


def cross_error(where: str, value: object, allowed: str) -> PydanticCustomError:
    """A validation error found across fields, carrying its own YAML path (see core.yamlspec)."""
    return PydanticCustomError(
        "cross_field", "{where}: {value} is not allowed; {allowed}", {"where": where, "value": repr(value), "allowed": allowed}
    )


def _check_unique(where: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise cross_error(where, n, "names must be unique (it appears twice)")
        seen.add(n)


def load_fleet(path: str | Path) -> FleetSpec:
    """Read and validate a fleet YAML file; raises `InputError` naming the YAML path, value and what is allowed."""
    from core.yamlspec import load_yaml_model

    return load_yaml_model(FleetSpec, path)
