"""Spot availability as the controller observes it: rounds of worker statuses become each spot pool's trace, and
a replanning cycle forecasts the pool's GPUs from it (stored beside the models' forecasts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.replan.availability import observed_availability
from controller.replan.cycle import run_cycle
from core.status import WorkerStatus
from db.fleets import put_fleet
from db.forecasts import latest_forecasts
from db.workers import health_history, record_worker_statuses
from tests.controller.conftest import FLEET, make_controller, serve
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


@dataclass
class SteppedClock:
    """A controller clock that moves only when the test moves it."""

    t: float

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)


def _status(worker: str, time_s: float) -> WorkerStatus:
    return WorkerStatus(worker_id=worker, pool=worker.split("/")[0], gpu_type="L4", time_s=time_s,
                        memory_total_gib=24.0)


def _sim_controller(db_url: str, tmp_path, trace: str, **settings: object):
    """(clock, controller, fleet): the `sim` backend replaying `trace` (relative to `tmp_path`) on pool `spot`,
    on a clock the test steps."""
    import yaml

    from controller.backends import BackendRegistry
    from controller.runtime import Controller
    from controller.settings import load_settings

    workers = tmp_path / "workers.yaml"
    workers.write_text(yaml.safe_dump({"apiVersion": "fleetwise/v1", "kind": "Workers", "fleets": {
        FLEET: {"backend": "sim", "spot_traces": {"spot": trace}}}}))
    fleet = make_fleet(pools=POOLS, models=[{"name": "chat", "arch": "Llama-3.2-1B", "tp_options": [1],
                                             "max_context_tokens": 4096}])
    fleet = type(fleet).model_validate(fleet.model_dump(mode="json") | {"metadata": {"name": FLEET}})
    clock = SteppedClock(1_000_000.0)
    ctl = Controller(load_settings(database_url=db_url, policy="dedicated", forecast_interval_s=60.0,
                                   history_s=3600.0, holder=f"spot-{tmp_path.name}", **settings),
                     clock=clock, backends=BackendRegistry.from_file(workers, clock))
    return clock, ctl, fleet


def test_the_sim_backend_replays_spot_traces_and_the_cycle_sees_the_gpus_go(db_url: str, tmp_path) -> None:
    """`backend: sim` with `spot_traces` (a workers file, paths relative to it): the trace takes two of three spot
    GPUs away 100 s in; the rounds after count one, and the stored forecast reads it. The clock is stepped by the
    test, so the rounds fall where it says whatever the machine's load."""
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "spot.csv").write_text("0,add,a\n0,add,b\n0,add,c\n100000,remove,b\n100000,remove,c\n")
    clock, ctl, fleet = _sim_controller(db_url, tmp_path, "traces/spot.csv", num_scenarios=8, reduce_scenarios_to=4)
    try:
        with ctl.sessions.begin() as s:
            put_fleet(s, spec=fleet)
        outcomes = []
        for _ in range(3):  # rounds at 0, 150 and 300 s
            outcomes.append(run_cycle(ctl, FLEET, trigger="manual", policy="dedicated").outcome)
            clock.t += 150.0
        assert set(outcomes) <= {"planned", "unchanged"}, outcomes
        with ctl.sessions.begin() as s:
            rows = health_history(s, fleet=FLEET, start_s=0.0, end_s=clock.now())
            pool = {f.series: f for f in latest_forecasts(s, fleet=FLEET)}["pool:spot"]
        healthy = [(round(t), w) for t, w, p, ok in rows if p == "spot" and ok]
        assert len({t for t, _ in healthy}) == 3 and len(healthy) == 3 + 1 + 1  # three up, then one
        # The builder reads the pool on its grid of whole intervals, so the third cycle is the first whose last
        # whole interval lies after the removal: its forecast starts from the one GPU left.
        assert pool.payload["quantiles"]["0.5"][0] == 1.0
    finally:
        ctl.close()


def test_bad_sim_spot_traces_name_the_setting(tmp_path) -> None:
    import pytest

    from controller.backends import BackendRegistry, FleetBackend
    from core.clock import WallClock
    from core.errors import InputError

    (tmp_path / "spot.csv").write_text("0,add,a\n60000,remove,a\n")
    fleet = make_fleet(pools=POOLS)
    cases = [({"ghost": str(tmp_path / "spot.csv")}, 0.0, ("fleets.f.spot_traces.ghost: 'ghost' is not allowed; a "
                                                           "pool of fleet f: od, spot")),
             ({"spot": str(tmp_path / "nope.csv")}, 0.0, (f"fleets.f.spot_traces.spot: {tmp_path / 'nope.csv'}: no "
                                                         "such file")),
             ({"spot": str(tmp_path / "spot.csv")}, 60.0, "fleets.f.spot_start_s: 60.0 is not allowed")]
    for traces, start, message in cases:
        registry = BackendRegistry(WallClock(), {"f": FleetBackend(backend="sim", spot_traces=traces,
                                                                   spot_start_s=start)})
        with pytest.raises(InputError) as info:
            registry.get("f", fleet)
        assert message in str(info.value)


def test_forecasting_through_the_api_includes_the_spot_pools(db_url: str) -> None:
    """`POST /v1/fleets/{name}/forecasts` on a real server: the models' forecasts and `pool:spot`, in GPUs."""
    fleet = make_fleet(pools=POOLS, models=[{"name": "chat", "arch": "Llama-3.2-1B", "tp_options": [1],
                                             "max_context_tokens": 4096}])
    fleet = type(fleet).model_validate(fleet.model_dump(mode="json") | {"metadata": {"name": "spotty"}})
    ctl = make_controller(db_url, sim_fleets=())
    now = ctl.clock.now()
    with ctl.sessions.begin() as s:
        put_fleet(s, spec=fleet)
        for k in range(30):
            up = ["od/0", "spot/0", "spot/1"] + (["spot/2"] if k % 4 else [])
            record_worker_statuses(s, fleet="spotty", statuses=[_status(w, now - 1800 + 60 * k) for w in up])
    api = serve(ctl)
    try:
        made = api.client("plan").post("/v1/fleets/spotty/forecasts")
        assert made.status_code == 201, made.text
        by_series = {f["series"]: f for f in made.json()}
        assert set(by_series) == {"chat", "pool:spot"} and by_series["pool:spot"]["quantity"] == "gpus"
        listed = api.client("read").get("/v1/fleets/spotty/forecasts").json()
        assert {f["series"] for f in listed} == {"chat", "pool:spot"}
    finally:
        api.close()


def test_a_worker_that_turns_unhealthy_raises_gpu_removed_and_back_gpu_added(db_url: str, tmp_path) -> None:
    """Reclaimed spot GPUs of the `sim` backend still answer, unhealthy: the observe stage compares each answer with
    the worker's last stored one, so the cycle after the reclaim sees `gpu_removed` (and re-places), and the one
    after the GPU returns sees `gpu_added`."""
    from controller.replan.observe import observe
    from core.state import EventKind

    (tmp_path / "spot.csv").write_text("0,add,a\n0,add,b\n100000,remove,b\n250000,add,b\n")
    clock, ctl, fleet = _sim_controller(db_url, tmp_path, "spot.csv")
    try:
        with ctl.sessions.begin() as s:
            put_fleet(s, spec=fleet)
        runtime = ctl.fleet(FLEET)
        seen = []
        for _ in range(4):  # rounds at 0, 150, 300 and 450 s
            events = observe(ctl, runtime).state.events
            seen.append(sorted((e.kind.value, e.worker_id) for e in events
                               if e.kind in (EventKind.GPU_REMOVED, EventKind.GPU_ADDED)))
            clock.t += 150.0
        assert seen[0] == [("gpu_removed", "spot/2")]  # the trace starts with two of three: first seen unhealthy
        assert len(seen[1]) == 1 and seen[1][0][0] == "gpu_removed" and seen[1][0][1] != "spot/2"
        assert seen[2] == [("gpu_added", seen[1][0][1])] and not seen[3]  # a worker's state changes once
    finally:
        ctl.close()
