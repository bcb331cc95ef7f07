"""Run the real `fleetwise` CLI in a subprocess (exit codes and stderr exactly as users see them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "160", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args], cwd=cwd or ROOT, env=full_env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )
