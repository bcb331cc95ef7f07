"""Reader for the Azure LLM inference traces (AzurePublicDataset, 2023; Patel et al., "Splitwise", ISCA'24).

Format: CSV with the header `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps like `2023-11-16 18:15:46.6805900`.
One model per file; multi-model workloads are derived with `workloads.synth`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.requests import RequestTable
from workloads.tabular import raise_bad_value, read_csv_frame, token_column, warn_if_unsorted

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_FMT = "TIMESTAMP,ContextTokens,GeneratedTokens (e.g. 2023-11-16 18:15:46.6805900,374,44)"


def read_azure(path: str | Path, *, model: str = "azure", slo_class: str = "default") -> RequestTable:
    """All requests of one Azure trace file as `model`/`slo_class`; arrival_s is relative to the first request.

    Malformed rows raise `InputError` at `file:line`; rows out of time order are sorted with a `TraceOrderWarning`.
    """
    frame = read_csv_frame(path, columns=AZURE_COLUMNS, header=True, fmt=_FMT, dtype={"TIMESTAMP": "str"})
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="ISO8601", errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise_bad_value(path, row + 2, "TIMESTAMP", frame["TIMESTAMP"].iloc[row],
                        "a timestamp like 2023-11-16 18:15:46.6805900")
    ns = stamps.to_numpy("datetime64[ns]").astype(np.int64)
    arrival_s = (ns - ns.min()) / 1e9
    prompt = token_column(frame, "ContextTokens", source=path, first_line=2)
    output = token_column(frame, "GeneratedTokens", source=path, first_line=2)
    warn_if_unsorted(arrival_s, path)
    n = arrival_s.shape[0]
    return RequestTable.from_columns(
        arrival_s=arrival_s, model_idx=np.zeros(n, np.int32), slo_idx=np.zeros(n, np.int16),
        prompt_tokens=prompt, output_tokens=output, model_names=(model,), slo_names=(slo_class,),
    )
