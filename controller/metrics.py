"""Prometheus metrics of one controller (`GET /metrics`), on a registry of its own so that several controllers in
one process (tests, the demo) never share counters.

Every `reason` label takes values from a fixed list (`REJECT_REASONS`, the cycle stages), never from messages, so
the number of series stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REJECT_REASONS = ("unauthenticated", "forbidden", "invalid", "not_found", "conflict", "too_large",
                  "database_unavailable")
CYCLE_STAGES = ("observe", "forecast", "plan", "store", "execute")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ControllerMetrics:
    """The controller's counters, histograms and gauges (`fleetwise_*`)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter("fleetwise_http_requests", "API requests answered.",
                                     ["method", "route", "status"], registry=r)
        self.http_seconds = Histogram("fleetwise_http_request_seconds", "API request latency.", ["route"],
                                      buckets=LATENCY_BUCKETS_S, registry=r)
        self.rejected = Counter("fleetwise_http_rejected", "API requests refused, by reason.", ["reason"],
                                registry=r)
        self.telemetry_rows = Counter("fleetwise_telemetry_rows", "Request telemetry rows stored.", registry=r)
        self.cycles = Counter("fleetwise_replan_cycles", "Replanning cycles, by outcome.", ["outcome"], registry=r)
        self.cycle_failures = Counter("fleetwise_replan_failures", "Failed replanning cycles, by the stage that "
                                      "failed.", ["reason"], registry=r)
        self.cycle_seconds = Histogram("fleetwise_replan_cycle_seconds", "Replanning cycle wall time.",
                                       buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r)
        self.ticks = Counter("fleetwise_replan_ticks", "Cron ticks, by whether this controller held the lease.",
                             ["lease"], registry=r)
        self.actions = Counter("fleetwise_plan_actions", "Plan actions executed, by final state.", ["state"],
                               registry=r)
        self.preemption_notices = Counter("fleetwise_preemption_notices", "Preemption notices received through "
                                          "the API.", registry=r)
        self.lease_held = Gauge("fleetwise_replan_lease_held", "1 while this controller holds the replan lease.",
                                registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for stage in CYCLE_STAGES:
            self.cycle_failures.labels(reason=stage)

    def render(self) -> bytes:
        return generate_latest(self.registry)
