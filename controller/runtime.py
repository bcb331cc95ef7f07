"""`Controller`: the state of one controller process — database, clock, settings, the fleets' executor backends,
their planners and scenario builders, background work — shared by the REST API, the cron scheduler and the CLI.

Per fleet, one cycle or execution runs at a time (`FleetRuntime.lock`): a plan is never executed while the next one
is being made from the fleet's state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from controller.backends import BackendRegistry
from controller.metrics import ControllerMetrics
from controller.settings import Settings
from core.clock import WallClock
from core.errors import NotFoundError
from core.fleet import FleetSpec
from core.latency import LatencyBook
from core.protocols import Clock, Planner
from core.state import FleetEvent
from db.action_log import SqlActionLog
from db.engine import make_engine, make_sessionmaker
from db.models import ApiTokenRow
from db.tokens import authenticate_token, hash_secret

TOKEN_CACHE_S = 5.0  # a revoked token stops working within this long


def make_planner(policy: str, book: LatencyBook, *, interval_s: float | None = None) -> Planner:
    """The planner called `policy` (settings.POLICIES). `interval_s`: the forecast interval the planner's scenarios
    come on; fleetwise then prices a placement over as many intervals as the placement holds for
    (`placement_interval_s`), as the what-if `fleetwise` policy does (`whatif.predictive.fleetwise_setup`) — over
    one 60 s interval, a placement that holds 300 s saw a missing replica cost a fifth of what it costs, and the
    churn of adding one outweighed it at every cycle."""
    from optimizers.baselines import BASELINES
    from optimizers.fleetwise import FleetwisePlanner

    if policy == "fleetwise":
        planner = FleetwisePlanner(book=book)
        if interval_s:
            planner.horizon_intervals = max(1, round(planner.placement_interval_s / interval_s))
        return planner
    if policy not in BASELINES:
        raise NotFoundError("policy", policy, ["fleetwise", *BASELINES])
    return BASELINES[policy](book)


@dataclass
class FleetRuntime:
    """What the controller keeps between cycles of one fleet: planners (FleetwisePlanner remembers its last
    placement), the scenario builder (which refits cheaply between full method selections), the events the last
    execution raised (failed actions) for the next cycle's FleetState, and the preemption notices posted since the
    last plan."""

    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    planners: dict[tuple[str, str], Planner] = field(default_factory=dict)  # (policy, spec digest) → planner
    builder: Any = None  # forecasters.builder.ScenarioBuilder for `builder_key`
    builder_key: str = ""
    events: list[FleetEvent] = field(default_factory=list)
    num_cycles: int = 0
    # Preemption notices posted to the API (`POST /v1/fleets/{name}/preemption-notices`), by worker: handed to every
    # cycle's state until a plan has taken them (`take_notices`), whatever the cycle that was running did with
    # `events` meanwhile.
    notices: dict[str, FleetEvent] = field(default_factory=dict)
    _notices_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_notice(self, event: FleetEvent) -> None:
        with self._notices_lock:
            self.notices[event.worker_id or ""] = event

    def pending_notices(self) -> tuple[FleetEvent, ...]:
        with self._notices_lock:
            return tuple(self.notices.values())

    def take_notices(self, handed: tuple[FleetEvent, ...]) -> None:
        """Forget the notices a plan was given (a newer notice for the same worker stays)."""
        with self._notices_lock:
            for e in handed:
                if self.notices.get(e.worker_id or "") is e:
                    del self.notices[e.worker_id or ""]

    def planner(self, policy: str, spec: FleetSpec, spec_digest: str, *, interval_s: float | None = None) -> Planner:
        key = (policy, spec_digest)
        if key not in self.planners:
            from simulator.latency import build_latency_book

            self.planners[key] = make_planner(policy, build_latency_book(spec), interval_s=interval_s)
        return self.planners[key]


class TokenCache:
    """Bearer-token checks without a database write per request: an authenticated token is remembered for
    `TOKEN_CACHE_S` (so `last_used_at` is written at most that often)."""

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions
        self._known: dict[str, tuple[float, tuple[str, ...], str]] = {}  # sha256 → (until, scopes, name)
        self._lock = threading.Lock()

    def cached(self, secret: str) -> tuple[str, tuple[str, ...]] | None:
        """(name, scopes) if the token was authenticated less than `TOKEN_CACHE_S` ago; None otherwise."""
        with self._lock:
            hit = self._known.get(hash_secret(secret))
        return (hit[2], hit[1]) if hit is not None and hit[0] > time.monotonic() else None

    def lookup(self, secret: str) -> tuple[str, tuple[str, ...]] | None:
        """(name, scopes) of the live token with this secret; None for an unknown or revoked one."""
        found = self.cached(secret)
        if found is not None:
            return found
        key = hash_secret(secret)
        now = time.monotonic()
        with self.sessions.begin() as session:
            row: ApiTokenRow | None = authenticate_token(session, secret=secret)
            found = None if row is None else (row.name, tuple(row.scopes))
        with self._lock:
            if found is None:
                self._known.pop(key, None)
            else:
                self._known[key] = (now + TOKEN_CACHE_S, found[1], found[0])
        return found


class Controller:
    """See the module docstring. `clock` defaults to the wall clock; `backends` to the workers file's."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 backends: BackendRegistry | None = None) -> None:
        self.settings = settings
        self.clock = clock or WallClock()
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.action_log = SqlActionLog(self.engine)
        self.backends = backends or BackendRegistry.from_file(settings.workers_file, self.clock)
        self.metrics = ControllerMetrics()
        self.tokens = TokenCache(self.sessions)
        self._fleets: dict[str, FleetRuntime] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fleetwise-ctl")

    def fleet(self, name: str) -> FleetRuntime:
        with self._lock:
            if name not in self._fleets:
                self._fleets[name] = FleetRuntime(name)
            return self._fleets[name]

    def background(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run `fn(*args)` on the controller's worker threads (plan executions, what-if jobs)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.engine.dispose()
