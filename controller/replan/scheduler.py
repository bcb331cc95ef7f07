"""Cron replanning: APScheduler fires `tick()` on the cron expression (`FLEETWISE_REPLAN_CRON`); a tick replans every
fleet that has a spec, but only in the controller that holds the `replan` lease.

The lease (`db.lease`, one atomic upsert) is taken or renewed at every tick for `lease_ttl_s`, so while its holder
lives it keeps replanning and every other controller's tick finds the lease taken and does nothing: exactly one
controller replans per tick. A holder that dies stops renewing, and the first tick after its lease expires moves
replanning to another controller; a holder that stops cleanly (`stop()`) gives the lease back at once.

A tick never raises: a cycle's failure is recorded in its cycle row, an unreachable database is logged, and the next
tick runs normally. Ticks do not overlap (a tick still running when the next is due makes APScheduler skip it).
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from controller.replan.cron import cron_trigger
from controller.replan.cycle import CycleResult, run_cycle
from controller.runtime import Controller
from db.lease import acquire_lease, release_lease
from db.models import FleetRow

LEASE_NAME = "replan"
log = logging.getLogger(__name__)


class ReplanScheduler:
    """Runs `tick()` on a cron expression in a background thread (`start()` / `stop()`)."""

    def __init__(self, ctl: Controller, *, cron: str | None = None) -> None:
        self.ctl = ctl
        self.trigger = cron_trigger(cron or ctl.settings.replan_cron)
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1,
                                                                           "misfire_grace_time": 30})
        self.num_ticks = 0

    def start(self) -> ReplanScheduler:
        self.scheduler.add_job(self.tick, self.trigger, id="replan", name="replan")
        self.scheduler.start()
        return self

    def stop(self) -> None:
        """Stop ticking (waiting for a running tick) and give the lease back."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        try:
            with self.ctl.sessions.begin() as s:
                release_lease(s, name=LEASE_NAME, holder=self.ctl.settings.holder)
        except SQLAlchemyError:
            log.warning("could not release the replan lease; it expires on its own", exc_info=True)
        self.ctl.metrics.lease_held.set(0)

    def next_fire_s(self) -> float | None:
        job = self.scheduler.get_job("replan")
        return job.next_run_time.timestamp() if job is not None and job.next_run_time else None

    def tick(self) -> list[CycleResult]:
        """One tick: take or renew the lease; if it is ours, one cycle per fleet. Never raises."""
        self.num_ticks += 1
        try:
            if not self._lease():
                return []
            return [run_cycle(self.ctl, name, trigger="cron", wait=False) for name in self._fleets()]
        except Exception:
            log.exception("replanning tick failed")
            return []

    def _lease(self) -> bool:
        ctl = self.ctl
        with ctl.sessions.begin() as s:
            held = acquire_lease(s, name=LEASE_NAME, holder=ctl.settings.holder, ttl_s=ctl.settings.lease_ttl_s,
                                 now_s=ctl.clock.now())
        ctl.metrics.lease_held.set(1 if held else 0)
        ctl.metrics.ticks.labels(lease="held" if held else "not_held").inc()
        return held

    def _fleets(self) -> list[str]:
        with self.ctl.sessions.begin() as s:
            return list(s.scalars(select(FleetRow.name).where(FleetRow.current_version > 0).order_by(FleetRow.name)))
