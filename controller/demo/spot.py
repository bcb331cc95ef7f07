"""`fleetwise demo --spot`: the demo fleet with a pool of spot L4s that the provider reclaims in a wave mid-replay.

Cloud providers reclaim spot capacity in bursts: several instances of a pool within a minute, back one by one
later (both Parcae's p3 trace and SpotServe's g4dn trace show such waves; REFERENCES.md). The demo's wave is drawn
from a seed, on the replay's own time: three of the four GPUs go between 25 % and 40 % of the replay, and come back
one at a time from 60–70 % on. The simulated GPUs follow it (a GPU taken away
gives its requests back to other replicas of their models and reports itself unhealthy); the controller is not told the trace. As a node agent on a spot VM
would, `NoticeAgent` forwards the provider's preemption notice 30 s before each GPU goes
(`POST /v1/fleets/{name}/preemption-notices`), and the controller replans at once; it learns of returns, and of
everything else, from the GPUs' answers, and forecasts the pool from those rounds. The closing simulations replay
the same wave, replanning on the notices too. Its steps scale with the replay: at the default 600 s, three GPUs go within 30 s, and each comes back
18–48 s after the one before.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np

from core.fleet import FleetSpec, PoolSpec
from core.protocols import Clock
from simulator.availability import SpotReplay, replay_pools
from simulator.config import SimConfig
from simulator.fleet import AvailabilityChange

SPOT_POOL = "l4-spot"
SPOT_GPUS = 4
RECLAIMED = 3
# 40 % of the catalog's on-demand L4 price: what spot L4 capacity costs against on-demand at the large clouds.
SPOT_PRICE_PER_HOUR = 0.32


def with_spot_pool(fleet: FleetSpec) -> FleetSpec:
    """`fleet` plus the spot pool (no trace: the controller learns its availability by watching it)."""
    pool = PoolSpec(name=SPOT_POOL, gpu="L4", count=SPOT_GPUS, gpus_per_node=1, spot=True,
                    price_per_hour=SPOT_PRICE_PER_HOUR)
    doc = fleet.model_dump(mode="json")
    doc["spec"]["pools"].append(pool.model_dump(mode="json"))
    return FleetSpec.model_validate(doc)


def write_reclaim_wave(path: Path, *, duration_s: float, drain_s: float, seed: int) -> list[tuple[float, int]]:
    """Write the wave as a trace of instance counts (`t_ms,running_node_count`, trace time 0 = the replay's start)
    and return its (seconds, count) rows."""
    rng = np.random.default_rng([seed, 0x5B07])
    gone = duration_s * (rng.uniform(0.25, 0.35) + np.sort(rng.uniform(0.0, 0.05, RECLAIMED)))
    back = duration_s * (rng.uniform(0.60, 0.70) + np.cumsum(rng.uniform(0.03, 0.08, RECLAIMED)))
    rows = [(0.0, SPOT_GPUS)]
    rows += [(float(t), SPOT_GPUS - i - 1) for i, t in enumerate(gone)]
    rows += [(float(t), SPOT_GPUS - RECLAIMED + i + 1) for i, t in enumerate(back)]
    rows.append((max(duration_s + drain_s, rows[-1][0] + 1.0), SPOT_GPUS))  # the trace spans the whole run
    path.write_text("".join(f"{round(t * 1000)},{n}\n" for t, n in rows))
    return rows


def wave_replay(fleet: FleetSpec, trace: Path, *, start_s: float) -> SpotReplay:
    """The wave's per-GPU changes and the pool's trace, with trace time 0 at `start_s`."""
    return replay_pools(fleet, {SPOT_POOL: (trace, "demo spot trace")}, offset_s=0.0, start_s=start_s)


def describe(rows: list[tuple[float, int]]) -> str:
    """One line for the console: when the wave takes GPUs and when they are all back."""
    low = min(rows, key=lambda r: r[1])
    first_gone = next(t for t, n in rows if n < SPOT_GPUS)
    all_back = next(t for t, n in rows if t > low[0] and n == SPOT_GPUS)
    return (f"spot pool {SPOT_POOL}: {SPOT_GPUS} L4 at ${SPOT_PRICE_PER_HOUR:.2f}/h; the provider reclaims "
            f"{RECLAIMED} of them from {first_gone:.0f} s into the replay and returns them by {all_back:.0f} s")


class NoticeAgent:
    """Forwards the provider's preemption notices to the controller, `notice_s` (the simulator's grace period, 30 s)
    before each GPU of the wave goes, as a node agent on a spot VM forwards the cloud's (run `run()` in a thread).
    A failed post is logged in `errors` and not retried: the controller still sees the GPU go."""

    def __init__(self, base_url: str, secret: str, fleet: str, clock: Clock, changes: list[AvailabilityChange],
                 *, notice_s: float = SimConfig().preemption_notice_s) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=120, headers={"Authorization": f"Bearer {secret}"})
        self.fleet, self.clock, self.notice_s = fleet, clock, notice_s
        self.due = sorted((c.time_s - notice_s, c.gpu_id) for c in changes if not c.up)
        self.sent: list[tuple[float, str]] = []  # (demo time, GPU)
        self.errors: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        for at, gpu in self.due:
            while self.clock.now() < at:
                if self.stopped.wait(0.05):
                    return
            try:
                res = self.http.post(f"/v1/fleets/{self.fleet}/preemption-notices",
                                     json={"worker_id": gpu, "leaves_in_s": self.notice_s})
                res.raise_for_status()
                self.sent.append((self.clock.now(), gpu))
            except httpx.HTTPError as exc:
                self.errors.append(f"{gpu}: {exc}")

    def close(self) -> None:
        self.stopped.set()
        self.http.close()
