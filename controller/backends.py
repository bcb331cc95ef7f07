"""Where each fleet's actions go: the executor backend per fleet, from the workers file (`FLEETWISE_WORKERS_FILE`)
or registered in-process (the demo, tests).

```yaml
apiVersion: fleetwise/v1
kind: Workers
fleets:
  small-hetero:
    backend: http                       # worker agents (`fleetwise worker`)
    status_timeout_s: 5
    workers: {h100/0: "http://10.0.0.5:8100", h100/1: "http://10.0.0.6:8100"}
  trial:
    backend: sim                        # simulated GPUs on the controller's clock (every GPU of the fleet)
    spot_traces: {v100-spot: traces/p3trace.csv}   # sim: spot pools replay these (relative to this file)
    spot_start_s: 19800                 # from this trace time, at the backend's start
```

A fleet without an entry has no backend: its plans are made and stored, never executed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.sim_fleet import ClockedSimFleet
from core.errors import InputError
from core.fleet import FleetSpec
from core.protocols import Clock
from core.yamlspec import load_yaml_model
from executors import BackendKind, RoutingTable, WorkerSet, http_workers
from simulator.fleet import AvailabilityChange

_STRICT = ConfigDict(frozen=True, extra="forbid")


class FleetBackend(BaseModel):
    """One fleet's backend."""

    model_config = _STRICT
    backend: Literal["http", "sim"]
    workers: dict[str, str] = Field(default={}, description="http: GPU id → worker agent URL.")
    status_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    action_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    spot_traces: dict[str, str] = Field(default={}, description="sim: pool → availability trace its simulated GPUs "
                                                                "replay from the backend's start.")
    spot_start_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=0.0, description="sim: the trace time the replay starts from.")


class WorkersFile(BaseModel):
    model_config = _STRICT
    apiVersion: Literal["fleetwise/v1"]
    kind: Literal["Workers"]
    fleets: dict[str, FleetBackend] = {}


class BackendRegistry:
    """Fleet name → `executors.WorkerSet`, built on first use (a `sim` backend needs the fleet's spec)."""

    def __init__(self, clock: Clock, configs: dict[str, FleetBackend] | None = None) -> None:
        self.clock = clock
        self.configs = dict(configs or {})
        self._sets: dict[str, tuple[str, WorkerSet]] = {}  # fleet → (spec digest it was built for, workers)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path | None, clock: Clock) -> BackendRegistry:
        if path is None:
            return cls(clock)
        fleets = load_yaml_model(WorkersFile, path).fleets
        return cls(clock, {name: cfg.model_copy(update={"spot_traces": {
            pool: str(path.parent / trace) for pool, trace in cfg.spot_traces.items()}}) for name, cfg in fleets.items()})

    def register(self, fleet: str, workers: WorkerSet) -> None:
        """Use `workers` for `fleet` (in-process backends: the demo, tests)."""
        with self._lock:
            self._sets[fleet] = ("", workers)
            self.configs.pop(fleet, None)

    def has(self, fleet: str) -> bool:
        return fleet in self._sets or fleet in self.configs

    def get(self, fleet: str, spec: FleetSpec) -> WorkerSet | None:
        """The fleet's workers (None: no backend)."""
        with self._lock:
            known = self._sets.get(fleet)
            config = self.configs.get(fleet)
            if known is not None and (config is None or config.backend != "sim" or known[0] == _digest(spec)):
                return known[1]
            if config is None:
                return None
            built = self._build(fleet, spec, config)
            self._sets[fleet] = (_digest(spec), built)
            return built

    def _build(self, fleet: str, spec: FleetSpec, config: FleetBackend) -> WorkerSet:
        if config.backend == "sim":
            sim = ClockedSimFleet(spec, self.clock, availability=self._spot_changes(fleet, spec, config))
            return WorkerSet(sim.clients(), RoutingTable(), kind=BackendKind.SIM)
        from workers.client import HttpWorkerClient

        unknown = sorted(set(config.workers) - set(spec.gpu_ids()))
        if unknown:
            raise InputError(f"fleets.{fleet}.workers", unknown[0], f"GPU ids of fleet {fleet}: "
                             f"{', '.join(spec.gpu_ids()[:8])} …")
        return http_workers(
            config.workers, lambda wid, url: HttpWorkerClient(url, worker_id=wid, timeout_s=config.action_timeout_s,
                                                              attempts=2),
            RoutingTable(), status_timeout_s=config.status_timeout_s)


    def _spot_changes(self, fleet: str, spec: FleetSpec, config: FleetBackend) -> list[AvailabilityChange]:
        """The per-GPU changes of the pools `config.spot_traces` names, from `spot_start_s` on, starting now."""
        from simulator.availability import replay_pools

        pools = [p.name for p in spec.pools]
        traces = {}
        for name, path in config.spot_traces.items():
            where = f"fleets.{fleet}.spot_traces.{name}"
            if name not in pools:
                raise InputError(where, name, f"a pool of fleet {fleet}: {', '.join(pools)}")
            traces[name] = (path, where)
        try:
            return replay_pools(spec, traces, offset_s=config.spot_start_s, start_s=self.clock.now()).changes
        except InputError as exc:
            if exc.where != "offset_s":
                raise
            raise InputError(f"fleets.{fleet}.spot_start_s", config.spot_start_s, exc.allowed) from None


def _digest(spec: FleetSpec) -> str:
    from db.fleets import spec_sha256

    return spec_sha256(spec)
