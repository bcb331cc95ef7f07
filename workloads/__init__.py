"""Workload ingestion and synthesis: trace readers (Azure LLM CSV, Mooncake JSONL, ServeGen rate series,
canonical CSV), multi-model popularity splits, rate series to arrivals, time slicing and rate scaling.

Entry point: `workloads.spec.load_workload(source, fleet=..., seed=...)` turns a trace file, a ServeGen folder or a
workload YAML into a `core.requests.RequestTable`; docs/workloads.md describes the formats and models.

May import: core.
"""
