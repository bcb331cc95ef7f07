"""Settings of one simulation run. Frozen: built once (the what-if CLI builds it from its options), never mutated;
every run writes `to_dict()` beside its results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.errors import InputError

SIM_PAGE_BYTES = 32 * 1024 * 1024
HOST_KV_MAX_GIB = 32.0  # default cap of the host memory per GPU for KV copied out of it
from workers.scheduler import SchedulerConfig


@dataclass(frozen=True)
class SimConfig:
    """How the fleet simulation replays a trace, calls the planner and accounts time."""

    replan_interval_s: float = 60.0  # the planner's periodic tick (simulated seconds)
    min_replan_gap_s: float = 1.0  # event-triggered replans are at least this far apart
    # Event kinds (`core.state.EventKind` values) that trigger a replan; None: every kind the planner subscribes
    # to. A controller that replans on its cron and on preemption notices only is `("preemption_notice",)`.
    replan_events: tuple[str, ...] | None = None
    plan_budget_s: float = 2.0  # wall-clock budget handed to Planner.plan
    monitor_interval_s: float = 1.0  # queues are checked for planner events and router timeouts this often
    router_timeout_s: float = 120.0  # a request waiting at the router (no replica of its model) is dropped after
    idle_threshold_s: float = 45.0  # an active model with no arrival for this long raises MODEL_IDLE
    group_window_s: float = 10.0  # arrival window of a request group (core.state.group_id)
    observation_window_s: float = 60.0  # per-model load in FleetState is observed over this window
    drain_timeout_s: float = 3600.0  # requests unfinished this long after the last arrival are dropped
    # GPUs of spot pools announce their removal this much earlier (PREEMPTION_NOTICE; SpotServe's 30 s grace;
    # 0: no notice). GPUs of on-demand pools that leave (failures) give none.
    preemption_notice_s: float = 30.0
    # KV pages and blocks. Coarser than the engine's defaults (2 MiB pages, 16-token blocks) for speed: kvcached maps
    # 2 MiB per layer and per K/V tensor, i.e. 128 MiB across a 32-layer model, so 32 MiB pages are not coarser
    # than what it allocates; blocks of up to 256 tokens fill such pages to ≥ 90 % (docs/simulator.md).
    page_bytes: int = SIM_PAGE_BYTES  # KV page size of every device's pool
    max_block_tokens: int = 256  # largest block size tried when fitting blocks to pages
    # Host memory per GPU, by default its share of the node's (core.fleet.PoolSpec.host_memory_gib): KV copied out
    # (swapped or checkpointed) gets a quarter of it, at most HOST_KV_MAX_GIB; weights kept warm the rest.
    host_kv_gib_per_gpu: float | None = None  # host memory per GPU for swapped-out and checkpointed KV
    host_weights_gib_per_gpu: float | None = None  # host memory per GPU for weights cached warm (residency host)
    metrics_window_s: float = 60.0  # window of the attainment-over-time series
    check_invariants: bool = False  # verify pools and schedulers after every iteration (tests; slow)
    run_ahead: bool = True  # one event per uninterrupted run of decodes (exact; off: one event per iteration)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # every device's batching limits

    def __post_init__(self) -> None:
        positive = ("replan_interval_s", "min_replan_gap_s", "plan_budget_s", "monitor_interval_s",
                    "router_timeout_s", "idle_threshold_s", "group_window_s", "observation_window_s",
                    "drain_timeout_s", "metrics_window_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise InputError(name, getattr(self, name), "seconds > 0")
        for name in ("preemption_notice_s", "host_kv_gib_per_gpu", "host_weights_gib_per_gpu"):
            if (getattr(self, name) or 0.0) < 0:
                raise InputError(name, getattr(self, name), "a value ≥ 0")
        if self.replan_events is not None:
            from core.state import EventKind

            known = {k.value for k in EventKind}
            for kind in self.replan_events:
                if kind not in known:
                    raise InputError("replan_events", kind, "event kinds: " + ", ".join(sorted(known)))
        if self.page_bytes < 4096:
            raise InputError("page_bytes", self.page_bytes, "at least 4096 bytes")
        if self.max_block_tokens < 1:
            raise InputError("max_block_tokens", self.max_block_tokens, "an integer ≥ 1")

    def host_gib_per_gpu(self, pool_host_gib_per_gpu: float) -> tuple[float, float]:
        """(KV, weights) host memory per GPU, given the GPU's share of its node's host memory."""
        kv = self.host_kv_gib_per_gpu
        if kv is None:
            kv = min(HOST_KV_MAX_GIB, pool_host_gib_per_gpu / 4)
        weights = self.host_weights_gib_per_gpu
        if weights is None:
            weights = max(0.0, pool_host_gib_per_gpu - kv)
        return kv, weights

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["scheduler"] = {k: (str(v) if v is not None and not isinstance(v, (int, float)) else v)
                            for k, v in asdict(self.scheduler).items()}
        return out
