"""`Demo`: the whole loop of `fleetwise demo` in one process, on the embedded default (a SQLite file).

1. A controller on a fresh SQLite database, its clock accelerated `speedup`× (`core.clock.WallClock`), the plan API
   on a loopback port, the demo fleet stored through the API.
2. Workers: the simulated GPUs on the controller's clock (`controller.sim_fleet`) and two CPU workers running real
   engines with tiny models (`workers.control.LocalWorkerClient`), behind one executor `WorkerSet` and its router.
3. History: the trace's first `history_s` seconds posted as telemetry (arrivals), so forecasts start from a past.
4. A first plan through the API (`POST /v1/fleets/demo/plans`), executed on the workers `warmup_s` demo seconds
   before the replay starts, so that its replicas have loaded when the first request comes: the fleet is serving
   when the replay starts, as a fleet the controller takes over is and as the closing simulations start (with the
   first plan in place). Then cron replanning (`ReplanScheduler`, under the lease) while the slice replays on the
   clock (`controller.demo.traffic`) and every ended request goes back to the controller as telemetry through the
   API. The live figures count from the replay's start to its last request's end.
5. A live Rich table while it runs; at the end the live figures beside simulations of the demo's policy and of the
   `dedicated` baseline on the same requests (`controller.demo.compare`).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live

from controller.api.app import create_app
from controller.demo.compare import BASELINE, compare
from controller.demo.spot import NoticeAgent, describe, wave_replay, with_spot_pool, write_reclaim_wave
from controller.demo.traffic import Replay, Shipper, post_rows
from controller.demo.view import LiveState, live_view, summary_table, verdict
from controller.demo.workload import default_workload, demo_traffic
from controller.replan.scheduler import ReplanScheduler
from controller.runtime import Controller
from controller.settings import load_settings
from controller.sim_fleet import ClockedSimFleet
from core.clock import WallClock
from core.fleet import FleetSpec, load_fleet
from core.requests import RequestTable
from db import migrate
from db.tokens import create_token
from executors import BackendKind, RoutingTable, WorkerSet
from simulator.availability import SpotReplay
from simulator.latency import build_latency_book
from workers.agent import serve_in_thread

DEMO_FLEET = Path(__file__).resolve().parent / "demo-fleet.yaml"
LOCAL_POOL = "cpu"
HISTORY_BATCH = 5000
REFRESH_S = 0.5


@dataclass(frozen=True)
class DemoOptions:
    workload: Path | None = None  # None: the Azure conversation trace if present, else the bundled chat mix
    duration_s: float = 600.0  # trace seconds replayed
    history_s: float = 600.0  # trace seconds ingested before the loop starts
    speedup: float = 10.0  # demo seconds per wall second
    rate_scale: float = 1.0
    cron: str = "*/5 * * * * *"  # replan every 5 wall seconds (50 demo seconds at 10×)
    policy: str = "fleetwise"
    budget_s: float = 2.0
    seed: int = 0
    database: Path | None = None  # SQLite file (default: a fresh one in a temporary folder)
    compare: bool = True
    drain_s: float = 120.0  # demo seconds to wait for requests still running at the end
    warmup_s: float = 60.0  # demo seconds between the clock's start and the replay's: the first plan loads
    spot: bool = False  # add a spot pool that loses three of its four GPUs mid-replay (controller.demo.spot)


class Demo:
    """One demo run (see the module docstring)."""

    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.o, self.console = options, console
        self.fleet: FleetSpec = load_fleet(DEMO_FLEET)
        self._tmp = tempfile.TemporaryDirectory(prefix="fleetwise-demo-")
        self.spot_trace: Path | None = None
        self.spot_up_seen: list[int] = []  # spot GPUs answering healthy, at each refresh of the live view
        if options.spot:
            self.fleet = with_spot_pool(self.fleet)
            self.spot_trace = Path(self._tmp.name) / "spot-wave.csv"
            wave = write_reclaim_wave(self.spot_trace, duration_s=options.duration_s, drain_s=options.drain_s,
                                      seed=options.seed)
            console.print(describe(wave))

    def run(self) -> dict[str, Any]:
        o = self.o
        source = o.workload or default_workload()
        history, replay = demo_traffic(self.fleet, source, history_s=o.history_s, duration_s=o.duration_s,
                                       rate_scale=o.rate_scale, seed=o.seed)
        self.console.print(f"[bold]fleetwise demo[/]: {len(replay)} requests of {source.name} replayed at "
                           f"{o.speedup:g}× on fleet [bold]{self.fleet.name}[/] "
                           f"({len(self.fleet.gpu_ids())} workers), policy {o.policy}, cron {o.cron!r}")
        # One replay of the spot wave, trace time 0 at the replay's start: the live GPUs and the simulations follow it.
        spot = wave_replay(self.fleet, self.spot_trace, start_s=replay.start_s) if self.spot_trace else None
        ctl, sim, workers = self._controller(replay.start_s, spot)
        agent = serve_in_thread(create_app(ctl))
        try:
            live = self._loop(ctl, agent.url, sim, workers, history, replay, spot)
        finally:
            agent.stop()
            ctl.close()
            for client in workers.clients.values():
                close = getattr(client, "close", None)
                if close is not None:
                    close()
        simulated = {}
        if o.compare:
            with self.console.status("simulating the same requests under each policy …"):
                simulated = compare(self.fleet, replay, o.policy, replan_interval_s=self._cron_period_s(),
                                    seed=o.seed, budget_s=o.budget_s, spot=spot)
        self.console.print(summary_table(live, simulated, o.policy))
        self.console.print(verdict(simulated, o.policy, BASELINE))
        return {"live": live, "simulated": simulated, "database": ctl.settings.database_url,
                "options": {k: str(v) for k, v in vars(o).items()}}

    # -- setup -------------------------------------------------------------------------------------------------------
    def _controller(self, replay_start_s: float,
                    spot: SpotReplay | None) -> tuple[Controller, ClockedSimFleet, WorkerSet]:
        o = self.o
        path = o.database or Path(self._tmp.name) / "fleetwise.db"
        url = f"sqlite:///{path}"
        migrate.upgrade(url)
        clock = WallClock(o.speedup, origin_s=replay_start_s - o.warmup_s)
        settings = load_settings(
            database_url=url, replan_cron=o.cron, policy=o.policy, plan_budget_s=o.budget_s,
            forecast_interval_s=60.0, forecast_horizon=5, history_s=o.history_s + o.duration_s, num_scenarios=16,
            reduce_scenarios_to=6, holder="demo")
        ctl = Controller(settings, clock=clock)
        book = build_latency_book(self.fleet)
        simulated = [g for g in self.fleet.gpu_ids() if not g.startswith(f"{LOCAL_POOL}/")]
        sim = ClockedSimFleet(self.fleet, clock, gpu_ids=simulated, book=book,
                              availability=spot.changes if spot else ())
        local = [self._engine_client(g) for g in self.fleet.gpu_ids() if g.startswith(f"{LOCAL_POOL}/")]
        workers = WorkerSet([*sim.clients(), *local], RoutingTable(), kind=BackendKind.LOCAL)
        ctl.backends.register(self.fleet.name, workers)
        return ctl, sim, workers

    def _engine_client(self, worker_id: str) -> Any:
        from workers.control import LocalWorkerClient
        from workers.engine import Engine, EngineConfig
        from workers.residency import ModelSource

        tiny = [m for m in self.fleet.models if m.arch.name.startswith("Tiny-")]
        sources = [ModelSource(m.name, m.arch, seed=self.o.seed + i) for i, m in enumerate(tiny)]
        config = EngineConfig(worker_id=worker_id, pool=LOCAL_POOL, gpu_type="CPU", memory_gib=1.0, kv_pages=128,
                              page_bytes=64 * 1024, max_num_seqs=32, max_num_batched_tokens=2048)
        return LocalWorkerClient(Engine(config, sources, slo_classes=self.fleet.slo_classes))

    def _cron_period_s(self) -> float:
        """Demo seconds between cron ticks (for the simulations' replanning interval)."""
        from controller.replan.cron import cron_trigger

        trigger = cron_trigger(self.o.cron)
        first = trigger.get_next_fire_time(None, _utc(0))
        second = trigger.get_next_fire_time(first, first)
        if second == first:
            second = trigger.get_next_fire_time(first, first.replace(microsecond=1))
        return max((second - first).total_seconds(), 1.0) * self.o.speedup

    # -- the loop ----------------------------------------------------------------------------------------------------
    def _loop(self, ctl: Controller, url: str, sim: ClockedSimFleet, workers: WorkerSet, history: RequestTable,
              replay: RequestTable, spot: SpotReplay | None) -> dict[str, Any]:
        o = self.o
        with ctl.sessions.begin() as s:
            _, secret = create_token(s, name="demo", scopes=["admin"])
        http = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {secret}"})
        name = self.fleet.name
        fleet = {"spec": self.fleet.model_dump(mode="json")} if self.o.spot else {"yaml": DEMO_FLEET.read_text()}
        _check(http.post("/v1/fleets", json=fleet), "store the fleet")
        self._ingest_history(http, name, history)
        with self.console.status("first plan …"):
            first = _check(http.post(f"/v1/fleets/{name}/plans", json={"policy": o.policy}), "make the first plan")
        self.console.print(f"first plan [bold]{first['plan_id']}[/]: {first['outcome']}"
                           + (f" — {first['error']}" if first["error"] else ""))
        router = workers.router
        assert isinstance(router, RoutingTable)
        slo = {c.name: c for c in self.fleet.slo_classes}
        replay_run = Replay(replay, ctl.clock, workers, router, sim,
                            lambda c, ttft, tpot: slo[c].attained(ttft, tpot), seed=o.seed)
        shipper = Shipper(url, secret, name, replay_run.outcomes)
        scheduler = ReplanScheduler(ctl).start()
        notices = NoticeAgent(url, secret, name, ctl.clock, spot.changes) if spot else None
        threads = [threading.Thread(target=t.run, daemon=True, name=n)
                   for t, n in ((replay_run, "demo-replay"), (shipper, "demo-telemetry"),
                                *([(notices, "demo-notices")] if notices else []))]
        for t in threads:
            t.start()
        try:
            self._watch(http, name, ctl, replay_run, shipper, replay, threads[0])
        finally:
            replay_run.stopped.set()
            if notices:
                notices.stopped.set()
                threads[2].join(timeout=130)
                notices.close()
            scheduler.stop()
            shipper.stopped.set()
            threads[1].join(timeout=60)
            shipper.close()
        live = self._live_figures(http, name, replay_run, replay)
        if notices:
            live["preemption_notices"] = {"sent": len(notices.sent), "failed": notices.errors}
        http.close()
        return live

    def _ingest_history(self, http: httpx.Client, fleet: str, history: RequestTable) -> None:
        for lo in range(0, len(history), HISTORY_BATCH):
            part = history.take(list(range(lo, min(lo + HISTORY_BATCH, len(history)))))
            rows = [{"request_id": int(part.request_id[i]), "model": part.model_of(i),
                     "slo_class": part.slo_names[int(part.slo_idx[i])], "arrival_s": float(part.arrival_s[i]),
                     "prompt_tokens": int(part.prompt_tokens[i]), "output_tokens": int(part.output_tokens[i])}
                    for i in range(len(part))]
            post_rows(http, fleet, rows)
        self.console.print(f"history: {len(history)} requests of the {self.o.history_s:.0f} s before the replay "
                           "stored through the API")

    def _watch(self, http: httpx.Client, fleet: str, ctl: Controller, replay_run: Replay, shipper: Shipper,
               replay: RequestTable, replay_thread: threading.Thread) -> None:
        end_s = replay.start_s + self.o.duration_s
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            while True:
                replay_run.collect()
                live.update(live_view(self._state(http, fleet, ctl, replay_run, shipper, replay)))
                now = ctl.clock.now()
                finished = not replay_thread.is_alive() and (replay_run.in_flight() == 0
                                                             or now > end_s + self.o.drain_s)
                if finished:
                    return
                time.sleep(REFRESH_S)

    def _state(self, http: httpx.Client, fleet: str, ctl: Controller, replay_run: Replay, shipper: Shipper,
               replay: RequestTable) -> LiveState:
        cycles = http.get(f"/v1/fleets/{fleet}/cycles", params={"limit": 1000}).json()
        plans = http.get(f"/v1/fleets/{fleet}/plans", params={"limit": 1}).json()
        workers = http.get(f"/v1/fleets/{fleet}/workers").json()["workers"]
        out = replay_run.outcomes
        spot_pools = frozenset(p.name for p in self.fleet.pools if p.spot)
        if spot_pools:
            self.spot_up_seen.append(sum(w["healthy"] for w in workers if w["pool"] in spot_pools))
        return LiveState(
            demo_s=min(max(ctl.clock.now() - replay.start_s, 0.0), self.o.duration_s + self.o.drain_s),
            duration_s=self.o.duration_s, sent=out.sent, completed=out.completed, dropped=out.dropped,
            met=out.met_slo, acknowledged=shipper.acknowledged, cycles=cycles, plan=plans[0] if plans else None,
            workers=workers, spot_pools=spot_pools)

    def _live_figures(self, http: httpx.Client, fleet: str, replay_run: Replay, replay: RequestTable) -> dict[str, Any]:
        """The live run's figures: attainment from the replay's outcomes, cost from each executed plan's window from
        the replay's start until its last request ended, as the simulations count (the warm-up and the wait for the
        loop to stop serve no replayed request, so goodput needs no such cut)."""
        plans = http.get(f"/v1/fleets/{fleet}/plans", params={"limit": 1000}).json()
        executed = [p for p in plans if p["status"] in ("applied", "superseded")]
        windows = [http.get(f"/v1/plans/{p['plan_id']}/outcome").json() for p in executed]
        out = replay_run.outcomes
        end_s = out.last_end_s if out.sent and out.ended == out.sent else replay_run.clock.now()
        share = [replay_share(w["window_start_s"], w["window_end_s"], replay.start_s, end_s) for w in windows]
        cycles = http.get(f"/v1/fleets/{fleet}/cycles", params={"limit": 1000}).json()
        return {
            "requests": out.sent, "completed": out.completed, "dropped": out.dropped,
            "slo_attainment": out.met_slo / out.sent if out.sent else None,
            "goodput_tokens_per_s": sum(w["observed"]["goodput_tokens_per_s"] * (w["window_end_s"] -
                                        w["window_start_s"]) for w in windows) / max(self.o.duration_s, 1.0),
            "gpu_hours": sum(w["observed"]["gpu_hours"] * f for w, f in zip(windows, share)),
            "cost_usd": sum(w["observed"]["cost_usd"] * f for w, f in zip(windows, share)),
            "plans": len(plans), "plans_executed": len(executed),
            "cycles": {o: sum(c["outcome"] == o for c in cycles) for o in ("planned", "unchanged", "skipped",
                                                                           "failed")},
            **({"spot_gpus_up": {"fewest": min(self.spot_up_seen), "most": max(self.spot_up_seen)}}
               if self.spot_up_seen else {}),
        }


def replay_share(start_s: float, end_s: float, replay_start_s: float, replay_end_s: float = float("inf")) -> float:
    """The share of a plan's window [start_s, end_s) that falls in the replay [replay_start_s, replay_end_s): a plan
    holds its GPUs evenly over its window, so its GPU-hours and cost count in that proportion."""
    if end_s <= start_s:
        return 1.0 if replay_start_s <= start_s < replay_end_s else 0.0
    inside = min(end_s, replay_end_s) - max(start_s, replay_start_s)
    return min(max(inside / (end_s - start_s), 0.0), 1.0)


def _check(res: httpx.Response, what: str) -> dict[str, Any]:
    if res.status_code >= 400:
        raise RuntimeError(f"could not {what}: HTTP {res.status_code}: {res.text[:300]}")
    return res.json()


def _utc(epoch_s: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_s, UTC)
