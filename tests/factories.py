"""Small factories for test inputs shared across packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.fleet import FleetSpec
from core.requests import RequestTable

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_TRACES = ROOT.parent / "shared" / "data" / "traces"


def fleet_dict(**spec_overrides: Any) -> dict[str, Any]:
    """A minimal valid fleet as a dict: 2 H100s, one 8B model, one online and one offline class."""
    spec: dict[str, Any] = {
        "pools": [{"name": "h100", "gpu": "H100-SXM", "count": 2, "gpus_per_node": 2}],
        "models": [{"name": "chat", "arch": "Llama-3.1-8B", "tp_options": [1, 2], "max_context_tokens": 8192}],
        "slo_classes": [
            {"name": "interactive", "ttft_s": 1.0, "tpot_s": 0.1, "priority": 0},
            {"name": "batch", "online": False, "priority": 9},
        ],
    }
    spec.update(spec_overrides)
    return {"apiVersion": "fleetwise/v1", "kind": "Fleet", "metadata": {"name": "test"}, "spec": spec}


def make_fleet(**spec_overrides: Any) -> FleetSpec:
    return FleetSpec.model_validate(fleet_dict(**spec_overrides))


def write_fleet(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_table(n: int = 100, *, models: tuple[str, ...] = ("chat",), rate_per_s: float = 10.0, seed: int = 0,
               prompt_tokens: int = 512, output_tokens: int = 128) -> RequestTable:
    """Poisson arrivals over `models` (uniformly), fixed lengths, one SLO class 'interactive'."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate_per_s, n))
    return RequestTable.from_columns(
        arrival_s=arrivals,
        model_idx=rng.integers(0, len(models), n),
        slo_idx=np.zeros(n, np.int16),
        prompt_tokens=np.full(n, prompt_tokens),
        output_tokens=np.full(n, output_tokens),
        model_names=models,
        slo_names=("interactive",),
    )
