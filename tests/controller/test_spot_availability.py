"""Spot availability as the controller observes it: rounds of worker statuses become each spot pool's trace, and
a replanning cycle forecasts the pool's GPUs from it (stored beside the models' forecasts)."""

from __future__ import annotations

import numpy as np

from controller.replan.availability import observed_availability
from controller.replan.cycle import run_cycle
from core.status import WorkerStatus
from db.fleets import put_fleet
from db.forecasts import latest_forecasts
from db.workers import record_worker_statuses
from tests.controller.conftest import FLEET, make_controller
from tests.factories import make_fleet

POOLS = [{"name": "od", "gpu": "L4", "count": 1, "gpus_per_node": 1},
         {"name": "spot", "gpu": "L4", "count": 3, "gpus_per_node": 1, "spot": True, "price_per_hour": 0.3}]


def _round(t: float, up: dict[str, bool]) -> list[tuple[float, str, str, bool]]:
    """One round of status answers, a tenth of a second apart; workers left out did not answer."""
    return [(t + 0.1 * i, w, w.split("/")[0], ok) for i, (w, ok) in enumerate(up.items())]


def test_rounds_count_the_workers_that_answered_healthy() -> None:
    fleet = make_fleet(pools=POOLS)
    rows = (_round(100.0, {"od/0": True, "spot/0": True, "spot/1": True, "spot/2": True})
            + _round(400.0, {"od/0": True, "spot/0": True, "spot/2": False})  # spot/1 silent, spot/2 sick
            + _round(700.0, {"od/0": True})  # every spot GPU gone: a round all the same
            + _round(1000.0, {"od/0": True, "spot/0": True, "spot/1": True}))
    trace = observed_availability(fleet, rows, start_s=0.0, end_s=1200.0)["spot"]
    at = np.array([0.0, 50.0, 100.3, 400.2, 699.0, 700.0, 1000.3, 1200.0])
    assert trace.count_at(at).tolist() == [3, 3, 3, 1, 1, 0, 2, 2]  # the first count holds from the window's start
    assert trace.duration_s == 1200.0 and trace.removals().tolist() == [400.2, 400.2, 700.0]
    assert set(observed_availability(fleet, rows, start_s=0.0, end_s=1200.0)) == {"spot"}  # on-demand: not traced


def test_no_spot_pools_or_no_rounds_give_nothing() -> None:
    assert observed_availability(make_fleet(pools=POOLS[:1]), _round(1.0, {"od/0": True}), start_s=0, end_s=9) == {}
    assert observed_availability(make_fleet(pools=POOLS), [], start_s=0.0, end_s=9.0) == {}


def test_a_cycle_forecasts_spot_gpus_from_the_rounds_it_stored(db_url: str) -> None:
    """Simulated workers (the `sim` backend); the last hour of rounds, stored as a cycle stores them, saw the spot
    pool lose GPUs every few minutes: the cycle's stored `pool:spot` forecast reads them."""
    fleet = make_fleet(pools=POOLS, models=[{"name": "chat", "arch": "Llama-3.2-1B", "tp_options": [1],
                                             "max_context_tokens": 4096}])
    fleet = type(fleet).model_validate(fleet.model_dump(mode="json") | {"metadata": {"name": FLEET}})
    ctl = make_controller(db_url, policy="fleetwise")
    try:
        now = ctl.clock.now()
        with ctl.sessions.begin() as s:
            put_fleet(s, spec=fleet)
            for k in range(60):  # a round a minute; the spot pool alternates between 3 and 1 GPUs up
                up = ["od/0", "spot/0"] + (["spot/1", "spot/2"] if (k // 3) % 2 else [])
                record_worker_statuses(s, fleet=FLEET, statuses=[_status(w, now - 3600 + 60 * k) for w in up])
        result = run_cycle(ctl, FLEET, trigger="manual", policy="fleetwise")
        assert result.outcome in ("planned", "unchanged"), result
        with ctl.sessions.begin() as s:
            pool = {f.series: f for f in latest_forecasts(s, fleet=FLEET)}["pool:spot"]
            assert pool.quantity == "gpus"
            p10 = pool.payload["quantiles"]["0.1"]
        assert min(p10) < 3  # the swings it saw widen the band below the 3 GPUs up now
    finally:
        ctl.close()


def _status(worker: str, time_s: float) -> WorkerStatus:
    return WorkerStatus(worker_id=worker, pool=worker.split("/")[0], gpu_type="L4", time_s=time_s,
                        memory_total_gib=24.0)
