"""The canonical trace CSV: `arrival_s,model,slo_class,prompt_tokens,output_tokens`, one request per row.

It is what `fleetwise trace convert` writes and what every tool reads back: arrival times in seconds (≥ 0, kept as
written, not rebased; written with microsecond precision), model and SLO class names as text (any column order).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.requests import RequestTable
from workloads.tabular import numeric_column, read_csv_frame, token_column, warn_if_unsorted

CANONICAL_COLUMNS = ("arrival_s", "model", "slo_class", "prompt_tokens", "output_tokens")
_FMT = "arrival_s,model,slo_class,prompt_tokens,output_tokens (e.g. 0.125,llama8b-0,interactive,512,128)"


def read_canonical(path: str | Path) -> RequestTable:
    """Read a canonical CSV. Model and class dictionaries are in order of first appearance.

    Malformed rows raise `InputError` at `file:line`; rows out of time order are sorted with a `TraceOrderWarning`.
    """
    frame = read_csv_frame(path, columns=CANONICAL_COLUMNS, header=True, fmt=_FMT,
                           dtype={"model": "str", "slo_class": "str"})
    arrival_s = numeric_column(frame, "arrival_s", source=path, first_line=2, min_value=0.0,
                               expected="a time in seconds ≥ 0 (shift the trace so that none is negative)")
    model_idx, model_names = _names(frame, "model", path)
    slo_idx, slo_names = _names(frame, "slo_class", path)
    prompt = token_column(frame, "prompt_tokens", source=path, first_line=2)
    output = token_column(frame, "output_tokens", source=path, first_line=2)
    warn_if_unsorted(arrival_s, path)
    return RequestTable.from_columns(
        arrival_s=arrival_s, model_idx=model_idx, slo_idx=slo_idx, prompt_tokens=prompt, output_tokens=output,
        model_names=model_names, slo_names=slo_names,
    )


def _names(frame: pd.DataFrame, column: str, path: str | Path) -> tuple[np.ndarray, list[str]]:
    codes, names = pd.factorize(frame[column], sort=False)
    if (codes < 0).any():
        row = int(np.argmax(codes < 0))
        raise InputError(column, None, f"{column} must be a non-empty name", source=f"{path}:{row + 2}",
                         problem="an empty field is not allowed")
    return codes, [str(n) for n in names]


def write_canonical(table: RequestTable, path: str | Path) -> None:
    """Write `table` as a canonical CSV (replaces `path`). The rows go to a temporary file beside `path`, renamed
    onto it once complete: an interrupted or failed write leaves `path` as it was, never half written."""
    path = Path(path).resolve()  # through a symlink: the file it names is replaced, not the link
    frame = pd.DataFrame({
        "arrival_s": table.arrival_s,
        "model": pd.Categorical.from_codes(table.model_idx, categories=list(table.model_names)),
        "slo_class": pd.Categorical.from_codes(table.slo_idx, categories=list(table.slo_names)),
        "prompt_tokens": table.prompt_tokens,
        "output_tokens": table.output_tokens,
    })
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # created like `path` would be (umask)
    try:
        frame.to_csv(partial, index=False, float_format="%.6f")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
