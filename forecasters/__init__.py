"""Forecasters: per-model load (rates with quantiles), request lengths, GPU availability, and the weighted joint
scenarios the optimizers plan over.

`load` (LoadForecaster, fit_many) over `methods`/`statmethods`, chosen by `selection` with `backtest`;
`hierarchy` (totals bottom-up); `lengths` and `length_model` (torch); `availability`; `scenarios` and `builder`
(one replanning cycle → ScenarioSet); `series` and `sources` (counts from logs and traces). docs/forecasting.md
describes the methods and the measured accuracy.

May import: core, workloads.
"""
