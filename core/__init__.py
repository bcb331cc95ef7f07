"""Shared vocabulary of fleetwise: fleet spec, hardware and model catalogs, workload records, latency
models, forecasts and scenarios, plans, actions, worker status, and the protocols between stages.

May import: nothing else from the project (only the standard library, numpy and pydantic).
"""
