"""What `fleetwise demo` shows: the live table (refreshed from the controller's REST API while the trace replays)
and the closing summary (the live run beside simulations of the demo's policy and the `dedicated` baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class LiveState:
    """One refresh of the live view."""

    demo_s: float  # demo seconds replayed so far
    duration_s: float
    sent: int
    completed: int
    dropped: int
    met: int
    acknowledged: int
    cycles: list[dict[str, Any]]  # newest first (GET /v1/fleets/{name}/cycles)
    plan: dict[str, Any] | None  # newest plan summary
    workers: list[dict[str, Any]]  # GET /v1/fleets/{name}/workers → workers
    spot_pools: frozenset[str] = frozenset()


def live_view(s: LiveState) -> Group:
    head = Table.grid(padding=(0, 2))
    ended = s.completed + s.dropped
    head.add_row(
        f"[bold]demo time[/] {s.demo_s:6.0f} / {s.duration_s:.0f} s",
        f"[bold]requests[/] {s.sent} sent, {s.completed} done, {s.dropped} dropped, {s.sent - ended} in flight",
        f"[bold]SLO met[/] {s.met / ended:.1%}" if ended else "[bold]SLO met[/] –",
        f"[bold]telemetry[/] {s.acknowledged} rows stored",
    )
    failed = sum(c["outcome"] == "failed" for c in s.cycles)
    last = s.cycles[0] if s.cycles else None
    plan = s.plan
    head.add_row(
        f"[bold]cycles[/] {len(s.cycles)} ({failed} failed)",
        f"[bold]last cycle[/] {last['outcome']} in {sum(last['timings_s'].values()):.1f} s" if last else "",
        f"[bold]plan[/] {plan['plan_id']} ({plan['status']})" if plan else "[bold]plan[/] –",
        f"{plan['num_actions']} actions" if plan else "",
    )
    if s.spot_pools:
        spot = [w for w in s.workers if w["pool"] in s.spot_pools]
        head.add_row(f"[bold]spot[/] {sum(w['healthy'] for w in spot)}/{len(spot)} GPUs up", "", "", "")
    return Group(head, replicas_table(s.workers, s.spot_pools))


def replicas_table(workers: list[dict[str, Any]], spot_pools: frozenset[str] = frozenset()) -> Table:
    """Per worker: its replicas, residency and queues; a spot GPU the provider has taken back says so."""
    table = Table("worker", "kind", "replicas (residency: running/waiting)", "KV pages", title="Fleet now",
                  title_justify="left")
    for w in workers:
        reps = ", ".join(f"{r['model']} ({r['residency']}{'…' if r['activating_until_s'] else ''}: "
                         f"{r['num_running']}/{r['num_waiting']})" for r in w["replicas"]) or "–"
        kind = "engine (CPU)" if w["gpu_type"] == "CPU" else f"sim {w['gpu_type']}"
        if w["pool"] in spot_pools:
            kind += " spot"
        if not w["healthy"]:
            reps = "[red]reclaimed[/]" if w["pool"] in spot_pools else "[red]not answering[/]"
        table.add_row(w["worker_id"], kind, reps, f"{w['kv_pages_used']}/{w['kv_pages_total']}")
    return table


def summary_table(live: dict[str, Any], simulated: dict[str, dict[str, Any]], policy: str) -> Table:
    table = Table("run", "policy", "requests", "SLO attainment", "goodput tok/s", "GPU-h", "cost $",
                  title="fleetwise demo: summary")
    table.add_row("live (this run)", policy, str(live["requests"]), _pct(live["slo_attainment"]),
                  f"{live['goodput_tokens_per_s']:.0f}", f"{live['gpu_hours']:.2f}", f"{live['cost_usd']:.2f}")
    for name, f in simulated.items():
        table.add_row("simulated", name, str(f["requests"]["total"]), _pct(f["slo_attainment"]),
                      f"{f['goodput_tokens_per_s']:.0f}", f"{f['gpu_hours']:.2f}", f"{f['cost_usd']:.2f}")
    return table


def verdict(simulated: dict[str, dict[str, Any]], policy: str, baseline: str) -> Text:
    if policy not in simulated or baseline not in simulated or policy == baseline:
        return Text("")
    a, b = simulated[policy], simulated[baseline]
    points = 100 * (a["slo_attainment"] - b["slo_attainment"])
    cost = (a["cost_usd"] / b["cost_usd"] - 1) * 100 if b["cost_usd"] else 0.0
    return Text(f"{policy} vs {baseline} on the same requests: {points:+.1f} points of SLO attainment, "
                f"{cost:+.0f}% cost")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"
