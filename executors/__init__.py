"""Executors: diff an observed fleet state against a plan into ordered actions and carry them out on
WorkerClients with bounded concurrency, retries and idempotency, writing every outcome to an ActionLog.

May import: core.
"""
