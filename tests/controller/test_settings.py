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
