"""Prometheus metrics of one worker (prometheus-client), served by the agent at `/metrics`.

Queue and memory figures are read from the engine when scraped (a custom collector: the engine owns the numbers);
latencies are observed into histograms as requests finish. Labels are bounded: model names the worker serves and
a fixed set of finish reasons.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.engine import Engine
from workers.handles import RequestHandle

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FINISH_REASONS = ("stop", "length", "dropped", "removed", "error")


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        status = self.engine.status()
        running = GaugeMetricFamily("fleetwise_worker_requests_running", "Requests running on the device.",
                                    labels=["model"])
        waiting = GaugeMetricFamily("fleetwise_worker_requests_waiting",
                                    "Requests queued (waiting, preempted, swapped or paused).", labels=["model"])
        pages = GaugeMetricFamily("fleetwise_worker_kv_pages_used", "KV pages a model holds in the shared pool.",
                                  labels=["model"])
        for r in status.replicas:
            running.add_metric([r.model], r.num_running)
            waiting.add_metric([r.model], r.num_waiting + r.num_swapped + r.num_offline_paused)
            pages.add_metric([r.model], r.kv_pages_used)
        yield from (running, waiting, pages)
        yield GaugeMetricFamily("fleetwise_worker_kv_pages_total", "Pages of the shared KV pool.",
                                value=status.kv_pages_total)
        yield GaugeMetricFamily("fleetwise_worker_host_kv_pages_used", "Swapped-out or checkpointed KV in host "
                                "memory, in pages.", value=status.host_kv_pages_used)
        yield CounterMetricFamily("fleetwise_worker_preemptions", "Running requests preempted.",
                                  value=self.engine.scheduler.num_preemptions)
        yield CounterMetricFamily("fleetwise_worker_iterations", "Engine iterations run.", value=self.engine.num_steps)


class WorkerMetrics:
    """The registry the agent exposes; subscribes to the engine's finished requests."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        self.ttft = Histogram("fleetwise_worker_ttft_seconds", "Time to first token.", ["model"],
                              buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.tpot = Histogram("fleetwise_worker_tpot_seconds", "Mean time per output token after the first.",
                              ["model"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.finished = Counter("fleetwise_worker_requests_finished", "Requests ended, by reason.",
                                ["model", "reason"], registry=self.registry)
        self.tokens = Counter("fleetwise_worker_generated_tokens", "Output tokens of ended requests.", ["model"],
                              registry=self.registry)
        engine.finish_listeners.append(self.observe)

    def observe(self, handle: RequestHandle) -> None:
        reason = (handle.finish_reason or "").split(":")[0]
        self.finished.labels(handle.model, reason if reason in FINISH_REASONS else "dropped").inc()
        self.tokens.labels(handle.model).inc(len(handle.tokens))
        if handle.ttft_s is not None:
            self.ttft.labels(handle.model).observe(handle.ttft_s)
        if handle.tpot_s is not None and len(handle.tokens) > 1:
            self.tpot.labels(handle.model).observe(handle.tpot_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
