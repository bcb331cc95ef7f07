"""Discrete-event fleet simulator: event kernel, simulated clock, SimulatedWorker (a WorkerClient over the
shared scheduler and KV pool), latency profiles, workload replay and metrics.

May import: core, workloads, workers.scheduler, workers.kv_pool (never the torch parts of workers).
"""
