"""The replanning lease: exactly one of two controllers (threads with their own engines) wins each tick."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.errors import InputError
from db.engine import make_engine, make_sessionmaker
from db.lease import acquire_lease, lease_holder, release_lease

TICKS = 15


def _controller(url: str, holder: str, barrier: threading.Barrier, wins: list[tuple[int, str]]) -> None:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        for tick in range(TICKS):
            barrier.wait(timeout=30)
            with sessions.begin() as s:  # committed at once, as a controller would
                if acquire_lease(s, name=f"replan-{tick}", holder=holder, ttl_s=60.0, now_s=100.0 + tick):
                    wins.append((tick, holder))
    finally:
        engine.dispose()


def test_two_controllers_racing_for_each_tick_get_exactly_one_winner(db_url: str) -> None:
    barrier = threading.Barrier(2)
    wins: list[tuple[int, str]] = []
    threads = [threading.Thread(target=_controller, args=(db_url, h, barrier, wins)) for h in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(tick for tick, _ in wins) == list(range(TICKS))


def test_renew_while_mine_take_over_once_expired(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        assert acquire_lease(s, name="replan", holder="a", ttl_s=10, now_s=0.0)
        assert not acquire_lease(s, name="replan", holder="b", ttl_s=10, now_s=5.0)
        assert acquire_lease(s, name="replan", holder="a", ttl_s=10, now_s=8.0)  # renew → until 18
        assert not acquire_lease(s, name="replan", holder="b", ttl_s=10, now_s=17.9)
        assert lease_holder(s, name="replan", now_s=17.9) == "a"
        assert acquire_lease(s, name="replan", holder="b", ttl_s=10, now_s=18.0)  # expired: b takes it
        assert not acquire_lease(s, name="replan", holder="a", ttl_s=10, now_s=19.0)
        assert not release_lease(s, name="replan", holder="a")
        assert release_lease(s, name="replan", holder="b")
        assert lease_holder(s, name="replan", now_s=19.0) is None
        with pytest.raises(InputError, match="ttl_s"):
            acquire_lease(s, name="replan", holder="a", ttl_s=0, now_s=0.0)
