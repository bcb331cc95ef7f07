"""Cron expressions for replanning, parsed by APScheduler's `CronTrigger` (never by hand).

Five fields are a standard crontab (`minute hour day month weekday`); six put seconds first, for demos and tests
that replan every few seconds (`*/10 * * * * *`).
"""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger

FIELDS_WITH_SECONDS = ("second", "minute", "hour", "day", "month", "day_of_week")


def cron_trigger(expression: str, *, timezone: str = "UTC") -> CronTrigger:
    """The trigger for `expression`; `ValueError` naming the problem when it is not a 5- or 6-field cron."""
    fields = expression.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expression, timezone=timezone)
    if len(fields) == 6:
        return CronTrigger(**dict(zip(FIELDS_WITH_SECONDS, fields, strict=True)), timezone=timezone)
    raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday) or 6 (seconds first); "
                     f"{expression!r} has {len(fields)}")
