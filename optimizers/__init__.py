"""Optimizers: the stochastic placement program, the queue planner, liveput, the baseline planners and
plan assembly. Every planner implements `core.protocols.Planner`.

May import: core.
"""
