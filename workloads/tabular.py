"""Shared parsing for trace files: pandas' C parser for speed, and errors that name the file, line and value.

Every reader follows one policy for bad input:
- a malformed row (wrong field count, a value that is not a number, NaN, a negative or zero token count) raises
  `InputError` naming `file:line`, the value and the expected format;
- an empty file (or a header with no rows) raises `InputError`;
- rows out of time order are *sorted* (stable) and one `TraceOrderWarning` says how many there were. Merged logs
  from several frontends are routinely a little out of order; rejecting them would make operators re-sort by hand,
  while sorting loses nothing (each request keeps its own timestamp).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.requests import MAX_TOKENS


class TraceOrderWarning(UserWarning):
    """Some rows of a trace were out of time order and have been sorted."""


_BAD_LINE = re.compile(r"line (\d+)")


def read_csv_frame(
    path: str | Path,
    *,
    columns: Sequence[str],
    header: bool,
    fmt: str,
    dtype: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read a CSV file into a frame with exactly `columns` (checked against the header when `header`).

    `fmt` describes the expected format for error messages (e.g. "TIMESTAMP,ContextTokens,GeneratedTokens").
    Blank lines are kept as empty rows, so frame row i is file line i + 1 (+ 1 with a header).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file", str(path), f"an existing trace file ({fmt})")
    if header:
        found = _header(path)
        missing = [c for c in columns if c not in found]
        extra = [c for c in found if c not in columns]
        if missing or extra:
            problem = f"columns {found} do not match" if found else "no header"
            raise InputError("header", found, f"a header with the columns {','.join(columns)}", source=f"{path}:1",
                             problem=problem)
    try:
        frame = _parse(path, columns, header, dtype, fmt)
    except ValueError:
        if dtype is None:
            raise
        # A value that does not fit its dtype: parse untyped so the column checks can name the row.
        frame = _parse(path, columns, header, None, fmt)
    frame = _drop_trailing_blank_rows(frame)
    if not len(frame):
        raise InputError("file", str(path), f"at least one request row ({fmt})", problem="the trace has no rows")
    return frame if list(frame.columns) == list(columns) else frame[list(columns)]


def _parse(path: Path, columns: Sequence[str], header: bool, dtype: dict[str, str] | None, fmt: str) -> pd.DataFrame:
    """pandas' C parser; a row with the wrong number of fields becomes an `InputError` at its line."""
    try:
        return pd.read_csv(
            path, header=0 if header else None, names=None if header else list(columns), dtype=dtype,
            skip_blank_lines=False, on_bad_lines="error", engine="c", low_memory=False,
        )
    except pd.errors.ParserError as exc:
        m = _BAD_LINE.search(str(exc))
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise InputError("row", None, f"{len(columns)} comma-separated fields: {fmt}", source=where,
                         problem="wrong number of fields") from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError("file", str(path), f"a CSV trace with rows of {fmt}", problem=f"unreadable: {exc}") from None


def _drop_trailing_blank_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Blank lines at the end of a file (an editor's habit) are not rows; blank lines inside one are errors."""
    filled = frame.notna().any(axis=1).to_numpy()
    last = int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0
    return frame.iloc[:last] if last < len(frame) else frame


def _header(path: Path) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return []


def numeric_column(
    frame: pd.DataFrame,
    column: str,
    *,
    source: str | Path,
    first_line: int,
    integer: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
    expected: str = "a number",
    lines: np.ndarray | None = None,
) -> np.ndarray:
    """Column as float64; the first non-numeric, NaN, fractional (if `integer`), too-small or too-large value raises
    `InputError` at `source:line` (frame row i is file line `lines[i]` if given, else `first_line + i`)."""
    raw = frame[column]
    values = (raw if pd.api.types.is_numeric_dtype(raw) else pd.to_numeric(raw, errors="coerce")).to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if integer:
        bad |= values != np.floor(values)
    if min_value is not None:
        bad |= values < min_value
    if max_value is not None:
        bad |= values > max_value
    if bad.any():
        row = int(np.argmax(bad))
        line = int(lines[row]) if lines is not None else first_line + row
        raise_bad_value(source, line, column, raw.iloc[row], expected)
    return values


def raise_bad_value(source: str | Path, line: int, column: str, value: object, expected: str) -> None:
    if isinstance(value, np.generic):
        value = value.item()  # show -5, not np.int64(-5)
    shown = "an empty field" if value is None or (isinstance(value, float) and np.isnan(value)) else repr(value)
    raise InputError(column, value, f"{column} must be {expected}", source=f"{source}:{line}",
                     problem=f"{shown} is not allowed")


def token_column(
    frame: pd.DataFrame, column: str, *, source: str | Path, first_line: int = 1, lines: np.ndarray | None = None
) -> np.ndarray:
    """A token count column: whole numbers from 1 to MAX_TOKENS, as int32."""
    values = numeric_column(frame, column, source=source, first_line=first_line, integer=True, min_value=1,
                            max_value=MAX_TOKENS, expected=f"a whole number of tokens ≥ 1 and ≤ {MAX_TOKENS:,}",
                            lines=lines)
    return values.astype(np.int32)


def warn_if_unsorted(arrival_s: np.ndarray, source: str | Path) -> None:
    """Warn once (with a count) when arrivals are out of order; `RequestTable.from_columns` then sorts them."""
    num_back = int(np.count_nonzero(np.diff(arrival_s) < 0))
    if num_back:
        warnings.warn(
            f"{source}: {num_back} of {arrival_s.shape[0]} rows arrive earlier than the row before them; "
            "sorted by arrival time (stable)", TraceOrderWarning, stacklevel=3,
        )
