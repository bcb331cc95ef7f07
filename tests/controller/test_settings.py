"""Settings from the environment: a bad variable is one readable error naming it."""

from __future__ import annotations

import pytest

from controller.settings import load_settings
from core.errors import InputError


def test_a_bad_environment_variable_names_itself_and_the_validators_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWISE_REPLAN_CRON", "bad")
    with pytest.raises(InputError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("FLEETWISE_REPLAN_CRON: 'bad' is not allowed; a cron expression has 5 fields")
    assert "Value error" not in message


def test_a_type_error_keeps_pydantics_words() -> None:
    with pytest.raises(InputError, match="plan_budget_s|PLAN_BUDGET_S.*valid number"):
        load_settings(plan_budget_s="abc")


def test_the_live_fleetwise_planner_prices_a_placement_over_the_intervals_it_holds_for() -> None:
    """Placements hold `placement_interval_s` (300 s): over the demo's 60 s forecast grid that is five intervals, as
    the what-if policy prices it; at the default 300 s grid, one."""
    from controller.runtime import make_planner
    from simulator.latency import LatencyBook

    assert make_planner("fleetwise", LatencyBook(), interval_s=60.0).horizon_intervals == 5
    assert make_planner("fleetwise", LatencyBook(), interval_s=300.0).horizon_intervals == 1
    assert make_planner("fleetwise", LatencyBook()).horizon_intervals == 1
