"""The serving engine that runs on a GPU worker: scheduler, KV page pool, model runner, Triton kernels and
the worker agent. `scheduler` and `kv_pool` are pure Python (no torch) so that the simulator runs the same code.

May import: core.
"""
