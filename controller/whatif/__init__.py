"""The what-if CLI's machinery: resolved options, the policy registry, the workload a run replays, parallel runs
of the simulator (one process per policy and sweep point), the report JSON, tables and plots.

Part of `controller`, the only package that wires the simulator, the optimizers and the workloads together.
"""
