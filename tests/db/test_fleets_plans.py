"""Fleets with spec versions, and plans with their lifecycle."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.errors import ConflictError, InputError, NotFoundError
from db.actions import list_actions
from db.fleets import fleet_spec, get_fleet, put_fleet
from db.models import PlanActionRow, PlanRow
from db.plans import create_plan, get_plan, latest_plan, list_plans, set_plan_status, supersede_older, to_plan
from tests.db.builders import make_plan
from tests.factories import make_fleet


def test_a_changed_spec_makes_a_new_version(sessions: sessionmaker[Session]) -> None:
    spec = make_fleet()
    with sessions.begin() as s:
        assert put_fleet(s, spec=spec).version == 1
        assert put_fleet(s, spec=spec).version == 1  # unchanged: same version
        bigger = make_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 4, "gpus_per_node": 4}])
        assert put_fleet(s, spec=bigger).version == 2
    with sessions.begin() as s:
        assert get_fleet(s, name="test").current_version == 2
        assert fleet_spec(s, name="test") == bigger
        assert fleet_spec(s, name="test", version=1) == spec
        with pytest.raises(NotFoundError, match="version of fleet 'test'.*known: 1, 2"):
            fleet_spec(s, name="test", version=7)


def test_plans_round_trip_with_their_fleet_version_and_actions(sessions: sessionmaker[Session]) -> None:
    plan = make_plan()
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        create_plan(s, plan=plan, advisory=True)
    with sessions.begin() as s:
        row = get_plan(s, plan_id=plan.plan_id)
        assert to_plan(row) == plan
        assert (row.fleet_version, row.status, row.advisory) == (1, "proposed", True)
        assert row.expected["slo_attainment"] == pytest.approx(0.97)
        actions = list_actions(s, plan_id=plan.plan_id)
        assert [(a.seq, a.status, a.idempotency_key) for a in actions] == [
            (i, "pending", f"{plan.plan_id}:{i}") for i in range(3)
        ]


def test_a_plan_for_a_fleet_that_changed_is_refused_and_nothing_is_written(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        put_fleet(s, spec=make_fleet(pools=[{"name": "h100", "gpu": "H100-SXM", "count": 1, "gpus_per_node": 1}]))
    with pytest.raises(InputError, match="fleet_version.*changed since"), sessions.begin() as s:
        create_plan(s, plan=make_plan(), advisory=False, fleet_version=1)
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(PlanRow)) == 0
        assert s.scalar(select(func.count()).select_from(PlanActionRow)) == 0


def test_duplicate_plans_unknown_parents_and_unknown_fleets_are_refused(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        with pytest.raises(NotFoundError, match="unknown fleet 'test'"):
            create_plan(s, plan=make_plan(), advisory=False)
        put_fleet(s, spec=make_fleet())
        create_plan(s, plan=make_plan(), advisory=False)
        with pytest.raises(InputError, match="already exists"):
            create_plan(s, plan=make_plan(), advisory=False)
        with pytest.raises(NotFoundError, match="parent plan 'ghost'"):
            create_plan(s, plan=make_plan(generation=2, parent_id="ghost"), advisory=False)


def test_status_lifecycle_allows_only_the_documented_moves(sessions: sessionmaker[Session]) -> None:
    plan = make_plan()
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        create_plan(s, plan=plan, advisory=True)
        for status in ("approved", "applying", "applying", "applied"):  # a repeated move is a no-op
            assert set_plan_status(s, plan_id=plan.plan_id, status=status).status == status
        with pytest.raises(InputError, match="'applied'.*cannot become 'approved'.*superseded"):
            set_plan_status(s, plan_id=plan.plan_id, status="approved")
        with pytest.raises(InputError, match="one of proposed"):
            set_plan_status(s, plan_id=plan.plan_id, status="done")


def test_two_sessions_moving_one_plan_at_once_only_one_wins(sessions: sessionmaker[Session]) -> None:
    """Two applies of one approved plan both read `approved`; only the first may move it to `applying` (the plan
    would otherwise be executed twice)."""
    plan = make_plan()
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        create_plan(s, plan=plan, advisory=True)
        set_plan_status(s, plan_id=plan.plan_id, status="approved")
    with sessions.begin() as first:
        seen = get_plan(first, plan_id=plan.plan_id)  # read before the other request writes (and kept: the
        assert seen.status == "approved"             # session's identity map holds it only while it is referenced)
        with sessions.begin() as second:
            set_plan_status(second, plan_id=plan.plan_id, status="applying")
        with pytest.raises(ConflictError, match="moved from 'approved' to 'applying' in another request"):
            set_plan_status(first, plan_id=plan.plan_id, status="applying")
    with sessions.begin() as s:
        assert get_plan(s, plan_id=plan.plan_id).status == "applying"


def test_newer_plans_supersede_older_ones(sessions: sessionmaker[Session]) -> None:
    first, second = make_plan(generation=1), make_plan(generation=2, digest="e")
    with sessions.begin() as s:
        put_fleet(s, spec=make_fleet())
        create_plan(s, plan=first, advisory=False)
        create_plan(s, plan=second.model_copy(update={"parent_id": first.plan_id}), advisory=False)
        assert supersede_older(s, fleet="test", keep_plan_id=second.plan_id) == [first.plan_id]
        assert latest_plan(s, fleet="test").plan_id == second.plan_id
        assert [p.plan_id for p in list_plans(s, fleet="test", statuses=["superseded"])] == [first.plan_id]
