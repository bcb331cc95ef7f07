"""The wall clock (the simulator has its own `Clock` over simulated time)."""

from __future__ import annotations

import time


class WallClock:
    """Seconds since the Unix epoch; `speedup > 1` runs accelerated time (demos replaying traces faster)."""

    def __init__(self, speedup: float = 1.0, *, origin_s: float | None = None) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be > 0, got {speedup}")
        self.speedup = speedup
        self._wall0 = time.monotonic()
        self._origin_s = time.time() if origin_s is None else origin_s

    def now(self) -> float:
        return self._origin_s + (time.monotonic() - self._wall0) * self.speedup

    def sleep_until(self, t: float) -> None:
        delay = (t - self.now()) / self.speedup
        if delay > 0:
            time.sleep(delay)
