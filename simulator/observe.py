"""What the simulation shows a planner: the pieces of `core.state.FleetState` built from the simulated fleet.

- Request groups: queued requests by (model, SLO class, arrival window), per replica, plus those waiting at the
  router (`replica_id=None`), with their earliest TTFT deadline (QLM's unit).
- Running requests: what each replica is decoding (the queue planner re-estimates or evicts them).
- Load: per model, the arrival rate and mean prompt length over the observation window (from the trace columns,
  vectorised), the mean output length of requests completed in it (of all completed so far when none did), and
  the counts waiting and running.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from core.requests import Request, RequestTable
from core.state import ModelLoad, RequestGroup, RunningRequest, group_id
from simulator.router import Router
from simulator.worker import SimulatedWorker
from workers.scheduler import SeqStatus, Sequence


def _group_of(item: Request | Sequence, window_s: float) -> tuple[str, str, str, float]:
    if isinstance(item, Sequence):
        model, cls = item.model, item.slo_class
    else:
        model, cls = item.model, item.slo_class
    start = math.floor(item.arrival_s / window_s) * window_s
    gid = item.group_id if isinstance(item, Sequence) and item.group_id else group_id(model, cls, start)
    return gid, model, cls, start


def request_groups(workers: Iterable[SimulatedWorker], router: Router, window_s: float,
                   deadline_of) -> tuple[RequestGroup, ...]:
    """Queued requests as groups, ordered by (replica, earliest deadline, group id)."""
    acc: dict[tuple[str, str | None], list] = {}

    def add(item: Request | Sequence, replica_id: str | None, deadline: float, row: int) -> None:
        gid, model, cls, start = _group_of(item, window_s)
        entry = acc.get((gid, replica_id))
        if entry is None:
            acc[(gid, replica_id)] = [model, cls, start, 1, item.prompt_tokens, item.arrival_s, deadline, [row]]
            return
        entry[3] += 1
        entry[4] += item.prompt_tokens
        entry[5] = min(entry[5], item.arrival_s)
        entry[6] = min(entry[6], deadline)
        entry[7].append(row)

    for w in workers:
        for rep in w.replicas.values():
            name = rep.model.name
            queued = list(w.scheduler.queued(name)) if w.scheduler.has_model(name) else []
            for seq in queued + rep.parked:
                add(seq, rep.replica_id, seq.ttft_deadline_s, seq.seq_id)
    for line in router.waiting.values():
        for waiting in line:
            item = waiting.item
            row = waiting.row
            add(item, None, item.ttft_deadline_s if isinstance(item, Sequence) else deadline_of(item), row)
    groups = [RequestGroup(gid, m, c, start, n, p, first, dl, rid, tuple(sorted(ids)))
              for (gid, rid), (m, c, start, n, p, first, dl, ids) in acc.items()]
    groups.sort(key=lambda g: (g.replica_id or "", g.deadline_s, g.group_id))
    return tuple(groups)


def running_requests(workers: Iterable[SimulatedWorker]) -> tuple[RunningRequest, ...]:
    out = []
    for w in workers:
        for rep in w.replicas.values():
            name = rep.model.name
            if not w.scheduler.has_model(name):
                continue
            for seq in w.scheduler.sequences(name):
                if seq.status is SeqStatus.RUNNING:
                    started = seq.first_token_s if seq.first_token_s is not None else seq.arrival_s
                    out.append(RunningRequest(seq.seq_id, rep.replica_id, name, seq.slo_class, seq.prompt_tokens,
                                              seq.num_generated, started))
    return tuple(out)


class LoadTracker:
    """Per-model completed output lengths (for `ModelLoad.output_tokens_mean`) and last arrivals."""

    def __init__(self, table: RequestTable) -> None:
        m = len(table.model_names)
        self.table = table
        self.index = {name: i for i, name in enumerate(table.model_names)}
        self.window_out = np.zeros(m)
        self.window_done = np.zeros(m)
        self.total_out = np.zeros(m)
        self.total_done = np.zeros(m)
        self.last_arrival = np.full(m, np.nan)

    def arrived(self, model_idx: int, time_s: float) -> None:
        self.last_arrival[model_idx] = time_s

    def completed(self, seqs: Iterable[Sequence]) -> None:
        idx = self.index
        for s in seqs:
            i = idx[s.model]
            self.window_out[i] += s.num_generated
            self.window_done[i] += 1

    def loads(self, now_s: float, window_s: float, waiting: dict[str, int],
              running: dict[str, int]) -> dict[str, ModelLoad]:
        """The load of every model with any activity so far; resets the completion window."""
        t = self.table
        lo, hi = np.searchsorted(t.arrival_s, [now_s - window_s, now_s], side="right")
        m = len(t.model_names)
        idx = t.model_idx[lo:hi]
        count = np.bincount(idx, minlength=m)
        prompt = np.bincount(idx, weights=t.prompt_tokens[lo:hi], minlength=m)
        self.total_out += self.window_out
        self.total_done += self.window_done
        out_mean = np.where(self.window_done > 0, self.window_out / np.maximum(self.window_done, 1),
                            np.where(self.total_done > 0, self.total_out / np.maximum(self.total_done, 1), np.nan))
        self.window_out[:] = 0
        self.window_done[:] = 0
        loads = {}
        for i, name in enumerate(t.model_names):
            last = self.last_arrival[i]
            if np.isnan(last) and not waiting.get(name) and not running.get(name):
                continue
            loads[name] = ModelLoad(
                model=name, request_rate_per_s=float(count[i]) / window_s,
                prompt_tokens_mean=float(prompt[i] / count[i]) if count[i] else float("nan"),
                output_tokens_mean=float(out_mean[i]), last_arrival_s=None if np.isnan(last) else float(last),
                num_waiting=waiting.get(name, 0), num_running=running.get(name, 0),
            )
        return loads
