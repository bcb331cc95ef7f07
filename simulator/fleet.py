"""`FleetSimulation`: replay a RequestTable against a fleet of SimulatedWorkers under a Planner.

One run: the planner's first plan is deployed before the first arrival (its activations take no time: the fleet
is assumed warm when the trace starts); arrivals are streamed from the table's columns (never materialised up
front) and routed by the current plan's weights (simulator.router); the planner is called every
`replan_interval_s` and on the events it subscribes to (debounced by `min_replan_gap_s`), from a FleetState built
of the workers' statuses, the waiting request groups, the running requests and per-model load; each plan's
actions are carried out in dependency order (simulator.execute). GPU availability events remove GPUs (their work
goes back to the router and is recomputed elsewhere) and add them back. The run ends when every request has
completed or been dropped with a reason; `drain_timeout_s` after the last arrival, what is left is dropped.

Scenarios for predictive planners come from `scenarios_fn(state)`; an oracle is a `scenarios_fn` that reads the
true future trace (it is handed the state; the table is the caller's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from core.actions import Action, ApplyResult, SetRouting
from core.errors import InputError
from core.fleet import FleetSpec
from core.forecast import ScenarioSet
from core.latency import LatencyBook
from core.plan import Plan
from core.protocols import Planner
from core.requests import Request, RequestTable
from core.state import NO_REPLICA_TIMEOUT, EventKind, FleetEvent, FleetState
from simulator.config import SimConfig
from simulator.events import Arrival, Availability, EndOfRun, Monitor, Replan
from simulator.execute import PlanRunner, router_result
from simulator.kernel import Kernel, SimClock
from simulator.metrics import MetricsRecorder, SimResult
from simulator.monitor import QueueMonitor
from simulator.observe import LoadTracker, request_groups, running_requests
from simulator.router import Router, Waiting
from simulator.worker import SimReplica, SimulatedWorker
from workers.scheduler import Sequence

ScenariosFn = Callable[[FleetState], ScenarioSet | None]
UNFINISHED = "unfinished_at_end"


@dataclass(frozen=True, slots=True)
class AvailabilityChange:
    """A GPU leaves (`up=False`: spot preemption, failure) or joins the fleet at `time_s`."""

    time_s: float
    gpu_id: str
    up: bool


class FleetSimulation:
    """One deterministic run (see the module docstring). Build, then `run()` once."""

    def __init__(self, fleet: FleetSpec, table: RequestTable, planner: Planner, *, config: SimConfig | None = None,
                 book: LatencyBook | None = None, scenarios_fn: ScenariosFn | None = None,
                 availability: Iterable[AvailabilityChange] = ()) -> None:
        self.fleet, self.table, self.planner = fleet, table, planner
        self.config = config or SimConfig()
        self.book = book or LatencyBook()
        self.scenarios_fn = scenarios_fn
        _check_table(fleet, table)
        self._changes = sorted(availability, key=lambda a: (a.time_s, a.gpu_id))
        for change in self._changes:
            if change.gpu_id not in set(fleet.gpu_ids()):
                raise InputError("availability.gpu_id", change.gpu_id, f"a GPU of fleet {fleet.name}")
        self.kernel = Kernel(start_s=table.start_s)
        self.clock = SimClock(self.kernel)
        self.workers = {g: SimulatedWorker(g, fleet, self.book, self.config, self) for g in fleet.gpu_ids()}
        self.router = Router(self.config.router_timeout_s, self._locate)
        self.metrics = MetricsRecorder(table)
        self.loads = LoadTracker(table)
        self.runner = PlanRunner(self)
        self.queue_monitor = QueueMonitor(self)
        self.current_plan: Plan | None = None
        self.num_plans = 0
        self._events: list[FleetEvent] = []
        self._replica_home: dict[str, str] = {}  # replica id → leader GPU
        self._router_results: dict[str, ApplyResult] = {}
        self._triggered: Replan | None = None
        self._last_replan_s = -np.inf
        self._asked_for: set[str] = set()  # models with a REQUEST_FOR_INACTIVE_MODEL raised since the last plan
        self._billed = 0
        self._deadline_by_class = {c.name: (c.ttft_s if c.online and c.ttft_s else np.inf) for c in fleet.slo_classes}
        self._finished = False
        self._ran = False

    # -- running -----------------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        if self._ran:
            raise RuntimeError("a FleetSimulation runs once; build a new one")
        self._ran = True
        started = time.perf_counter()
        n = len(self.table)
        t0 = self.kernel.now_s
        if n:
            self.replan(Replan(t0, self, periodic=False), initial=True)
            k = self.kernel
            k.schedule(Arrival(float(self.table.arrival_s[0]), self, 0))
            k.schedule(Replan(t0 + self.config.replan_interval_s, self, periodic=True))
            k.schedule(Monitor(t0 + self.config.monitor_interval_s, self))
            k.schedule(EndOfRun(float(self.table.arrival_s[-1]) + self.config.drain_timeout_s, self))
            for change in self._changes:
                self._schedule_availability(change)
            k.run(stop=self._all_done)
        self.runner.finish()
        self.metrics.check_complete()  # every request completed or dropped with a reason
        for worker in self.workers.values():  # pools within capacity, one model per page, queues consistent
            worker.scheduler.check_invariants()
        end = self.kernel.now_s
        return SimResult.from_recorder(
            self.metrics, self.fleet, gpu_seconds_by_pool=self._gpu_seconds(end), plans=self.num_plans,
            wall_s=time.perf_counter() - started, sim_end_s=end, num_events=self.kernel.num_events,
            window_s=self.config.metrics_window_s, config=self.config.to_dict(),
        )

    def _all_done(self) -> bool:
        m = self.metrics
        return self._finished or m.num_completed + m.num_dropped == len(self.table)

    def _schedule_availability(self, change: AvailabilityChange) -> None:
        """A spot GPU's removal is announced `preemption_notice_s` before (if the run has started by then)."""
        notice = self.config.preemption_notice_s if self.fleet.pool_of_gpu(change.gpu_id).spot else 0.0
        if not change.up and notice > 0 and change.time_s - notice >= self.kernel.now_s:
            self.kernel.schedule(Availability(change.time_s - notice, self, change.gpu_id, False, notice=True))
        self.kernel.schedule(Availability(max(change.time_s, self.kernel.now_s), self, change.gpu_id, change.up))

    # -- arrivals and routing ----------------------------------------------------------------------------------
    def arrive(self, row: int) -> Arrival | None:
        t = self.table
        mi = int(t.model_idx[row])
        model = t.model_names[mi]
        now = self.kernel.now_s
        request = Request(row, now, model, t.slo_names[int(t.slo_idx[row])], int(t.prompt_tokens[row]),
                          int(t.output_tokens[row]))
        self.loads.arrived(mi, now)
        self._dispatch(request, now)
        nxt = row + 1
        return Arrival(float(t.arrival_s[nxt]), self, nxt) if nxt < len(t) else None

    def _dispatch(self, item: Request | Sequence, now: float) -> None:
        """Send a new request (submit) or a returned sequence (enqueue) to a target, or let it wait here."""
        target = self.router.pick(item.model)
        if target is None:
            self.router.wait(item.model, item, now)
            row = item.request_id if isinstance(item, Request) else item.seq_id
            self.metrics.waited_at_router[row] = True
            if item.model not in self._asked_for:
                self._asked_for.add(item.model)
                self.raise_event(FleetEvent(EventKind.REQUEST_FOR_INACTIVE_MODEL, now, model=item.model))
            return
        if target.replica.activating_until_s is not None:  # it waits at the replica for its weights to load
            self.metrics.waited_for_activation[item.request_id if isinstance(item, Request) else item.seq_id] = True
        if isinstance(item, Sequence):
            target.worker.enqueue(item, target.replica)
            return
        result = target.worker.submit(item)
        if result.status == "rejected":
            reason = "prompt_exceeds_context" if "context" in result.message else "rejected"
            self.metrics.dropped(item.request_id, reason)

    def _flush(self, model: str) -> None:
        if self.router.num_waiting(model) and self.router.pick(model) is not None:
            now = self.kernel.now_s
            for waiting in self.router.take_waiting(model):
                self._dispatch(waiting.item, now)

    def _locate(self, replica_id: str) -> tuple[SimulatedWorker, SimReplica] | None:
        home = self._replica_home.get(replica_id)
        if home is None:
            return None
        worker = self.workers[home]
        rep = worker.replicas.get(replica_id)
        return (worker, rep) if rep is not None else None

    # -- FleetHooks (called by workers) -------------------------------------------------------------------------
    @property
    def instant_activation(self) -> bool:
        return self.runner.instant

    def on_finished(self, seqs: list[Sequence]) -> None:
        self.metrics.finished(seqs)
        self.loads.completed(seqs)

    def on_dropped(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self.metrics.dropped(seq.seq_id, seq.drop_reason or "dropped", seq)

    def requeue(self, seqs: Iterable[Sequence]) -> None:
        now = self.kernel.now_s
        for seq in seqs:
            self._dispatch(seq, now)

    def hand_over(self, seqs: list[Sequence], to_replica_id: str, *, kv_on_host: bool) -> bool:
        found = self._locate(to_replica_id)
        if found is None or not found[1].serving:
            return False
        worker, rep = found
        for seq in seqs:
            worker.enqueue(seq, rep, kv_on_host=kv_on_host)
        return True

    def replica_changed(self, worker: SimulatedWorker, replica_id: str) -> None:
        rep = worker.replicas.get(replica_id)
        if rep is not None:
            self._replica_home[replica_id] = worker.worker_id
            model = rep.model.name
        elif self._replica_home.get(replica_id) == worker.worker_id:
            del self._replica_home[replica_id]
            model = replica_id.split("@", 1)[0]
        else:
            return
        for name in sorted({model, *(m for m, w in self.router.weights.items() if replica_id in w)}):
            self.router.refresh(name)
            self._flush(name)

    def worker(self, gpu_id: str) -> SimulatedWorker | None:
        return self.workers.get(gpu_id)

    def drain_settled(self, key: str, *, ok: bool, after_s: float, message: str) -> None:
        self.runner.settle(key, ok=ok, after_s=after_s)

    def billing_changed(self, worker: SimulatedWorker) -> None:
        self._billed += 1 if worker.billed else -1
        self.metrics.gpus_billed(self.kernel.now_s, self._billed)

    def _gpu_seconds(self, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for w in self.workers.values():
            out[w.pool_name] = out.get(w.pool_name, 0.0) + w.billed_seconds(now)
        return out

    # -- plans and actions -------------------------------------------------------------------------------------
    def raise_event(self, event: FleetEvent) -> None:
        """Record an event for the next plan; call the planner soon if it subscribes to this kind."""
        self._events.append(event)
        triggers = self.planner.subscriptions if self.config.replan_events is None else (
            self.planner.subscriptions & set(self.config.replan_events))
        if event.kind in triggers and self._triggered is None and not self._finished:
            at = max(self.kernel.now_s, self._last_replan_s + self.config.min_replan_gap_s)
            self._triggered = Replan(at, self, periodic=False)
            self.kernel.schedule(self._triggered)

    def replan(self, event: Replan, *, initial: bool = False) -> Replan | None:
        if self._finished:
            return None
        if not event.periodic:
            self._triggered = None
        state = self.observe()
        scenarios = self.scenarios_fn(state) if self.scenarios_fn is not None else None
        plan = self.planner.plan(self.fleet, state, scenarios, self.config.plan_budget_s)
        self.current_plan = plan
        self.num_plans += 1
        self._events = []
        self._asked_for.clear()
        self.queue_monitor.plan_adopted()
        self._last_replan_s = self.kernel.now_s
        self._adopt_routing(plan)
        self.runner.adopt(plan, instant=initial)
        if event.periodic:
            return Replan(event.time_s + self.config.replan_interval_s, self, periodic=True)
        return None

    def _adopt_routing(self, plan: Plan) -> None:
        """The plan's routing for models that no SetRouting action of the plan routes."""
        routed = {a.args.model for a in plan.actions if isinstance(a.args, SetRouting)}
        for model, weights in plan.routing.items():
            if model not in routed and self.router.weights.get(model) != weights:
                self.router.set_weights(model, weights)
                self._flush(model)

    def apply(self, action: Action) -> ApplyResult:
        """Send one action to its worker, or to the router when `worker_id` is None."""
        if action.worker_id is None:
            return self._apply_router(action)
        worker = self.workers.get(action.worker_id)
        if worker is None:
            return router_result(action, "failed", f"unknown worker {action.worker_id}")
        return worker.apply(action)

    def _apply_router(self, action: Action) -> ApplyResult:
        key = action.idempotency_key
        if key in self._router_results:
            return self._router_results[key]
        if isinstance(action.args, SetRouting):
            self.router.set_weights(action.args.model, action.args.weights)
            self._flush(action.args.model)
            result = router_result(action, "applied", f"{len(action.args.weights)} replicas")
        else:
            result = router_result(action, "failed", f"{action.kind} must name a worker")
        self._router_results[key] = result
        return result

    # -- observation -------------------------------------------------------------------------------------------
    def observe(self) -> FleetState:
        """The FleetState the planner sees now."""
        now = self.kernel.now_s
        workers = list(self.workers.values())
        statuses = tuple(w.status() for w in workers)
        waiting: dict[str, int] = {m: self.router.num_waiting(m) for m in self.router.waiting}
        running: dict[str, int] = {}
        for st in statuses:
            for r in st.replicas:
                waiting[r.model] = waiting.get(r.model, 0) + r.num_waiting
                running[r.model] = running.get(r.model, 0) + r.num_running
        groups = request_groups(workers, self.router, self.config.group_window_s,
                                lambda req: req.arrival_s + self._deadline_by_class.get(req.slo_class, np.inf))
        return FleetState(
            time_s=now, workers=statuses, current_plan=self.current_plan, groups=groups,
            load=self.loads.loads(now, self.config.observation_window_s, waiting, running),
            events=tuple(self._events), running=running_requests(workers),
            observation_window_s=self.config.observation_window_s,
        )

    # -- monitoring, availability, end -------------------------------------------------------------------------
    def monitor(self) -> Monitor | None:
        if self._finished:
            return None
        now = self.kernel.now_s
        for waiting in self.router.expired(now):
            self._drop_waiting(waiting, NO_REPLICA_TIMEOUT)
        self.queue_monitor.check(now)
        return Monitor(now + self.config.monitor_interval_s, self)

    def _drop_waiting(self, waiting: Waiting, reason: str) -> None:
        item = waiting.item
        self.metrics.dropped(waiting.row, reason, item if isinstance(item, Sequence) else None)

    def availability(self, gpu_id: str, up: bool, notice: bool) -> None:
        worker = self.workers[gpu_id]
        now = self.kernel.now_s
        if notice:
            self.raise_event(FleetEvent(EventKind.PREEMPTION_NOTICE, now, worker_id=gpu_id))
        elif up and not worker.healthy:
            worker.recover()
            self.raise_event(FleetEvent(EventKind.GPU_ADDED, now, worker_id=gpu_id))
        elif not up and worker.healthy:
            if now > self.table.start_s:  # GPUs down at the start are the fleet's initial state, not removals
                self.metrics.gpus_removed += 1
            worker.fail()
            self.raise_event(FleetEvent(EventKind.GPU_REMOVED, now, worker_id=gpu_id))

    def end_of_run(self) -> None:
        """Drop everything still in flight (reason `unfinished_at_end`) and stop."""
        for worker in self.workers.values():
            for seq in worker.scheduler.sequences():
                self.metrics.dropped(seq.seq_id, UNFINISHED, seq)
            for rep in worker.replicas.values():
                for seq in rep.parked:
                    self.metrics.dropped(seq.seq_id, UNFINISHED, seq)
        for line in self.router.waiting.values():
            for waiting in line:
                self._drop_waiting(waiting, UNFINISHED)
        self.router.waiting.clear()
        self._finished = True


def _check_table(fleet: FleetSpec, table: RequestTable) -> None:
    models = set(fleet.model_names)
    for name in table.model_names:
        if name not in models:
            raise InputError("workload model", name, f"a model of fleet {fleet.name}: {', '.join(sorted(models))}")
    classes = {c.name for c in fleet.slo_classes}
    for name in table.slo_names:
        if name not in classes:
            raise InputError("workload slo_class", name, f"a class of fleet {fleet.name}: {', '.join(sorted(classes))}")
