"""Forecasters: per-model load (rates with quantiles), request lengths, GPU availability, and the
weighted joint scenarios the optimizers plan over.

May import: core, workloads.
"""
