"""Reader for Mooncake-format request traces (Qin et al., "Mooncake", FAST'25): JSON lines such as
`{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}` with the timestamp in
milliseconds. `hash_ids` (prefix-cache block hashes) are not kept: `RequestTable` has no column for them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.requests import RequestTable
from workloads.tabular import numeric_column, token_column, warn_if_unsorted

MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
_FMT = 'one JSON object per line with "timestamp" (ms), "input_length" and "output_length"'


def read_mooncake(path: str | Path, *, model: str = "mooncake", slo_class: str = "default") -> RequestTable:
    """All requests of a Mooncake JSONL trace as `model`/`slo_class`; arrival_s is relative to the first request.

    Malformed lines raise `InputError` at `file:line`; lines out of time order are sorted with a
    `TraceOrderWarning`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file", str(path), f"an existing trace file ({_FMT})")
    try:
        with warnings.catch_warnings():  # pandas warns about ragged rows: the line scan below reports them
            warnings.simplefilter("ignore")
            frame = pd.read_json(path, lines=True, dtype=False)
        return _table(frame, None, path, model, slo_class)
    except (ValueError, TypeError, InputError):
        # The fast parser reports neither lines nor causes: parse line by line to name the first bad one.
        frame, lines = _scan(path)
        return _table(frame, lines, path, model, slo_class)


def _table(frame: pd.DataFrame, lines: np.ndarray | None, path: Path, model: str, slo_class: str) -> RequestTable:
    if not len(frame):
        raise InputError("file", str(path), f"at least one request ({_FMT})", problem="the trace has no rows")
    missing = [f for f in MOONCAKE_FIELDS if f not in frame.columns]
    if missing:
        raise InputError(missing[0], None, _FMT, source=str(path), problem="missing")
    stamp_ms = numeric_column(frame, "timestamp", source=path, first_line=1, lines=lines, min_value=0,
                              expected="a time in milliseconds ≥ 0")
    prompt = token_column(frame, "input_length", source=path, lines=lines)
    output = token_column(frame, "output_length", source=path, lines=lines)
    arrival_s = (stamp_ms - stamp_ms.min()) / 1000.0
    warn_if_unsorted(arrival_s, path)
    n = arrival_s.shape[0]
    return RequestTable.from_columns(
        arrival_s=arrival_s, model_idx=np.zeros(n, np.int32), slo_idx=np.zeros(n, np.int16),
        prompt_tokens=prompt, output_tokens=output, model_names=(model,), slo_names=(slo_class,),
    )


def _scan(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse line by line; raise at the first line that is not an object with the three fields."""
    rows: list[tuple[object, ...]] = []
    lines: list[int] = []
    with path.open() as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError("line", text.strip()[:60], _FMT, source=where, problem=f"not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError("line", obj, _FMT, source=where, problem="not a JSON object")
            missing = [k for k in MOONCAKE_FIELDS if k not in obj]
            if missing:
                raise InputError(missing[0], None, _FMT, source=where, problem="missing")
            rows.append(tuple(obj[k] for k in MOONCAKE_FIELDS))
            lines.append(line_no)
    return pd.DataFrame(rows, columns=list(MOONCAKE_FIELDS)), np.asarray(lines, np.int64)
