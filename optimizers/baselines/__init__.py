"""Baseline planners, each faithful to the system it stands for and documented with its source (docs/baselines.md):
`dedicated` (vLLM per model), `muxserve` (ICML'24), `qlm` (SoCC'24), `prism` (arXiv 2505.04021).

They implement `core.protocols.Planner` and import only `core` (like all of `optimizers`).
"""

from __future__ import annotations

from collections.abc import Callable

from core.protocols import Planner
from optimizers.baselines.dedicated import DedicatedPlanner
from optimizers.baselines.muxserve import MuxServePlanner
from optimizers.baselines.prism import PrismPlanner
from optimizers.baselines.qlm import QLMPlanner

__all__ = ["BASELINES", "DedicatedPlanner", "MuxServePlanner", "PrismPlanner", "QLMPlanner"]

# name → factory taking an optional `core.latency.LatencyBook`.
BASELINES: dict[str, Callable[..., Planner]] = {
    "dedicated": DedicatedPlanner,
    "muxserve": MuxServePlanner,
    "qlm": QLMPlanner,
    "prism": PrismPlanner,
}
