"""Small trace files written into tmp_path, and the shared-trace locations (tests skip when they are absent)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.factories import SHARED_TRACES

AZURE_CONV = SHARED_TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
M_LARGE = SHARED_TRACES / "servegen" / "language" / "m-large"


def need(path: Path) -> Path:
    """Skip the test when a shared trace is missing (the repository never carries the traces)."""
    if not path.exists():
        pytest.skip(f"shared trace {path.name} not found at {path.parent} (../shared/data/traces)")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_servegen(folder: Path, clients: dict[int, list[str]]) -> Path:
    """A ServeGen folder with one chunk-<client>-trace.csv per entry (rows as CSV lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    for client, rows in clients.items():
        write(folder / f"chunk-{client}-trace.csv", "\n".join(rows) + "\n")
    return folder


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def invoke(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """Run the real `fleetwise` entry point in this process (faster than a subprocess; same exit codes and
    output). `tests.cli.run_cli` covers the subprocess path."""
    from controller.cli import main

    monkeypatch.setattr(sys, "argv", ["fleetwise", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)
