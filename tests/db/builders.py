"""Small builders of core objects for the database tests."""

from __future__ import annotations

from core.actions import Action, ActivateModel, DeactivateModel, SetRouting
from core.plan import Expected, Outcome, Plan, Replica, SolverStats, make_plan_id


def make_actions(plan_id: str, generation: int = 1) -> tuple[Action, ...]:
    """Activate a replica, route to it, retire the old one: three actions, each depending on the one before."""
    args = [
        ActivateModel(model="chat", replica_id="chat@h100/1", gpu_ids=("h100/1",), kv_limit_gib=20.0),
        SetRouting(model="chat", weights={"chat@h100/1": 1.0}),
        DeactivateModel(model="chat", replica_id="chat@h100/0"),
    ]
    workers = ["h100/1", None, "h100/0"]
    return tuple(
        Action(plan_id=plan_id, seq=i, worker_id=w, args=a, depends_on=(i - 1,) if i else (), revision=generation,
               reason=f"step {i}")
        for i, (a, w) in enumerate(zip(args, workers, strict=True))
    )


def make_plan(fleet: str = "test", generation: int = 1, parent_id: str | None = None, digest: str = "d") -> Plan:
    plan_id = make_plan_id(fleet, "fleetwise", generation, digest)
    return Plan(
        plan_id=plan_id, parent_id=parent_id, fleet=fleet, policy="fleetwise", generation=generation,
        created_at_s=1000.0 + generation, horizon_s=600.0, input_digest=digest,
        replicas=(Replica(replica_id="chat@h100/1", model="chat", pool="h100", gpu_type="H100-SXM",
                          gpu_ids=("h100/1",), kv_share_gib=20.0),),
        routing={"chat": {"chat@h100/1": 1.0}},
        actions=make_actions(plan_id, generation),
        expected=Expected(overall=Outcome(slo_attainment=0.97, per_class={"interactive": 0.97}, cost_usd=12.5)),
        solver=SolverStats(name="highs", status="optimal", objective=1.5, time_s=0.2),
        reasons=("chat load doubled",),
    )
