"""Workload ingestion and synthesis: trace readers (Azure LLM CSV, Mooncake JSONL, ServeGen rate series,
canonical CSV), multi-model popularity splits, rate series to arrivals, time slicing and rate scaling.

May import: core.
"""
