"""Shared builders for simulator tests: small fleets and tables built by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core.fleet import FleetSpec
from core.requests import RequestTable
from tests.factories import fleet_dict


def small_fleet(**spec: Any) -> FleetSpec:
    return FleetSpec.model_validate(fleet_dict(**spec))


def table(arrivals, *, models=("chat",), model_idx=None, slo_idx=None, prompt=512, output=128,
          slo_names=("interactive", "batch")) -> RequestTable:
    n = len(arrivals)
    return RequestTable.from_columns(
        arrival_s=np.asarray(arrivals, float), model_idx=np.zeros(n, int) if model_idx is None else model_idx,
        slo_idx=np.zeros(n, int) if slo_idx is None else slo_idx,
        prompt_tokens=np.broadcast_to(prompt, n), output_tokens=np.broadcast_to(output, n),
        model_names=models, slo_names=slo_names,
    )


@pytest.fixture
def fleet() -> FleetSpec:
    return small_fleet()
