"""Trace format detection and one reader for every supported request-trace file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from core.errors import InputError
from core.requests import RequestTable
from workloads.azure import AZURE_COLUMNS, read_azure
from workloads.canonical import CANONICAL_COLUMNS, read_canonical
from workloads.mooncake import read_mooncake
from workloads.rates import is_rate_profile
from workloads.servegen import is_servegen_folder

TraceFormat = Literal["azure", "mooncake", "canonical", "servegen", "rates"]
FORMATS: tuple[str, ...] = ("azure", "mooncake", "canonical", "servegen", "rates")
_KNOWN = (
    "a ServeGen folder, a Mooncake .jsonl file, a CSV with the header TIMESTAMP,ContextTokens,GeneratedTokens "
    "(Azure) or arrival_s,model,slo_class,prompt_tokens,output_tokens (canonical), a rate profile (a CSV of "
    "requests/s per minute, as SpotServe's arrival-rates.csv), or a workload .yaml"
)


def detect_format(path: str | Path) -> TraceFormat:
    """The format of a trace path: a folder of chunk files is ServeGen, `.jsonl`/`.json` is Mooncake, a CSV of
    numbers only is a rate profile, another CSV is Azure or canonical by its header."""
    path = Path(path)
    if path.is_dir():
        if is_servegen_folder(path):
            return "servegen"
        inside = _trace_files(path)
        hint = f" (it holds {inside[1]:,} trace files: pass one, e.g. {inside[0]})" if inside else ""
        raise InputError("path", str(path), _KNOWN, problem=f"{path} holds no chunk-<client>-trace.csv files{hint}")
    if not path.is_file():
        raise InputError("path", str(path), _KNOWN, problem=f"no such file or folder: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".jsonl", ".json"):
        return "mooncake"
    if is_rate_profile(path):
        return "rates"
    try:
        header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (ValueError, UnicodeDecodeError):
        header = []
    if set(AZURE_COLUMNS) <= set(header):
        return "azure"
    if set(CANONICAL_COLUMNS) <= set(header):
        return "canonical"
    if path.name.startswith("chunk-") and path.name.endswith("-trace.csv"):
        raise InputError("path", str(path), "the ServeGen folder that holds this file",
                         problem=f"{path.name} is one ServeGen client's file")
    raise InputError("path", str(path), _KNOWN, problem=f"{path}: unknown trace format (header {header[:6]})")


def _trace_files(folder: Path, limit: int = 10_000) -> tuple[Path, int] | None:
    """The first trace-like file under `folder` (sorted) and how many there are, looking at most `limit` entries
    deep (a folder of SkyPilot or SpotServe traces, say)."""
    found: list[Path] = []
    for i, p in enumerate(folder.rglob("*")):
        if i >= limit:
            break
        if p.is_file() and p.suffix.lower() in (".csv", ".json", ".jsonl", ".txt"):
            found.append(p)
    return (min(found), len(found)) if found else None


def read_trace(
    path: str | Path, *, format: TraceFormat | Literal["auto"] = "auto", model: str | None = None,
    slo_class: str = "default",
) -> RequestTable:
    """Read a request trace file (Azure, Mooncake or canonical). `model` names single-model traces (default: the
    format's name); canonical traces carry their own models and classes."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "azure":
        return read_azure(path, model=model or "azure", slo_class=slo_class)
    if fmt == "mooncake":
        return read_mooncake(path, model=model or "mooncake", slo_class=slo_class)
    if fmt == "canonical":
        return read_canonical(path)
    raise InputError("format", fmt, "a request trace file (azure, mooncake, canonical); ServeGen folders and rate "
                     "profiles hold rates: synthesise requests from them with workloads.servegen.synthesize or "
                     "workloads.rates.synthesize_profile")
