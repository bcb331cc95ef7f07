from dataclasses import replace

import numpy as np
import pytest

from optimizers.liveput import (
    LiveputInput,
    SpotModel,
    config_value,
    plan_liveput,
    reactive_config,
    replica_value,
    survival,
)


def _input(available, online=20.0, offline=0.0, models=2, horizon=4):
    s = len(available)
    avail = np.repeat(np.asarray(available, float)[:, None], horizon, axis=1)
    spec = tuple(SpotModel(f"m{i}", (1, 4), (6.0, 30.0), (8.0, 40.0), (3.0, 1.0)) for i in range(models))
    return LiveputInput(16, 60.0, spec, np.full(s, 1 / s), avail, np.full((s, models, horizon), online),
                        np.full((s, models, horizon), offline))


def test_heavy_preemption_prefers_small_groups_that_survive() -> None:
    plan = plan_liveput(_input([16, 10, 8, 6]))
    assert all(tp == 1 for tp, n in plan.path[0] if n)
    calm = plan_liveput(_input([16, 16], online=28.0))
    assert any(tp == 4 for tp, n in calm.path[0] if n)  # without preemption the faster TP-4 wins


def test_liveput_is_worth_more_than_the_reactive_choice_in_expectation() -> None:
    inp = _input([16, 12, 9, 7], online=25.0)
    tps = sorted({tp for m in inp.models for tp in m.tp_options})
    from optimizers.liveput import survivor_pmf
    pmfs = {tp: survivor_pmf(inp, tp, 0) for tp in tps}
    values = [[replica_value(inp, m, o, 0, pmfs[tp]) for o, tp in enumerate(md.tp_options)]
              for m, md in enumerate(inp.models)]
    ours = config_value(values, inp, plan_liveput(inp).path[0])
    theirs = config_value(values, inp, reactive_config(inp))
    assert ours >= theirs


def test_offline_work_fills_spare_capacity() -> None:
    idle = plan_liveput(_input([16], online=0.0, offline=0.0))
    busy = plan_liveput(_input([16], online=0.0, offline=50.0))
    assert sum(n for _, n in idle.path[0]) == 0
    assert sum(n for _, n in busy.path[0]) > 0


def _serving(available, *, online=10.0, current=None, reaction_s=None, horizon=4, price=1.0):
    """One TP-1 model at 4 req/s per replica on a 16-GPU pool (10 req/s: three replicas cover it)."""
    s = len(available)
    avail = np.repeat(np.asarray(available, float)[:, None], horizon, axis=1)
    spec = (SpotModel("m", (1,), (4.0,), (4.0,), (5.0,)),)
    return LiveputInput(16, 60.0, spec, np.full(s, 1 / s), avail, np.full((s, 1, horizon), online),
                        np.zeros((s, 1, horizon)), gpu_usd_per_hour=price, current=current,
                        reaction_s=reaction_s, notice_s=30.0)


def test_a_reclaimed_replica_is_rehosted_while_the_pool_keeps_spare_gpus() -> None:
    inp = _serving([16, 12, 8], reaction_s=1.0)
    untouched = survival(replace(inp, reaction_s=None), 1, 0)
    assert np.allclose(untouched, [1.0, 12 / 16, 8 / 16])  # hypergeometric: one GPU among the survivors
    # 3 GPUs used, 8 or more up: every reclaimed replica moves to a spare GPU before its own leaves (load 5 s < 30 s
    # notice) and loses only the handover of its in-flight work (a quarter of the load time)
    rehosted = survival(inp, 1, 0, load_s=5.0, used=3)
    assert np.allclose(rehosted, 1 - (1 - untouched) * 1.25 / 60.0)
    # 10 GPUs used, 8 up: 2 of the 10 find no spare GPU and stay lost
    assert survival(inp, 1, 0, load_s=5.0, used=10)[2] == pytest.approx(8 / 10 - (8 / 10 - 0.5) * 1.25 / 60.0)


def test_no_hedge_replicas_against_losses_the_planner_repairs() -> None:
    lost = plan_liveput(_serving([16, 12, 10], price=3.0))  # Parcae's setting: lost for the interval
    rehosted = plan_liveput(_serving([16, 12, 10], price=3.0, reaction_s=1.0))
    assert rehosted.path[0] == ((1, 3),)  # what the demand needs
    assert lost.path[0][0][1] > 3  # hedges against losing a quarter of the pool


def test_replicas_the_forecast_no_longer_needs_are_shed() -> None:
    plan = plan_liveput(_serving([16], online=3.0, current=((1, 4),), reaction_s=1.0))
    assert plan.path[0] == ((1, 1),)  # a removed replica drains: nothing holds the idle ones


def test_values_computed_together_equal_each_replica_value() -> None:
    """`_Values` values options that share a TP degree and load time in one product: the same numbers as
    `replica_value` one by one, with and without re-hosting."""
    from optimizers.liveput import _Values

    rng = np.random.default_rng(3)
    spec = (SpotModel("a", (1, 2), (6.0, 13.0), (8.0, 17.0), (3.0, 1.5)),
            SpotModel("b", (1, 2), (4.0, 9.0), (5.0, 11.0), (3.0, 1.5)),
            SpotModel("c", (1,), (2.0,), (3.0,), (9.0,)))
    base = LiveputInput(12, 60.0, spec, np.full(4, 0.25), rng.integers(6, 13, (4, 3)).astype(float),
                        rng.uniform(1, 20, (4, 3, 3)), rng.uniform(0, 5, (4, 3, 3)))
    for inp in (base, replace(base, reaction_s=1.0, notice_s=30.0)):
        values = _Values(inp)
        for t in range(3):
            for used in (4, 9, 12):
                got = values.at(t, used)
                key = max(used, int(np.floor(inp.available[:, t]).min()))
                for m, model in enumerate(spec):
                    for o in range(len(model.tp_options)):
                        want = replica_value(inp, m, o, t, used=key if inp.reaction_s is not None else None)
                        np.testing.assert_allclose(got[m][o], want, rtol=1e-12, atol=1e-12)


def test_spot_is_bought_only_for_what_the_on_demand_tier_leaves() -> None:
    """Base capacity (on-demand replicas on GPUs held anyway) serves first: online beyond its SLO capacity and
    offline beyond the throughput its online load leaves idle are what a spot replica is worth."""
    inp = replace(_serving([16], online=10.0, reaction_s=1.0), offline_rps=np.full((1, 1, 4), 2.0),
                  offline_usd_per_request=0.002)
    online, offline = replace(inp, base_online_rps=np.array([8.0]), base_offline_rps=np.array([4.0])).uncovered(
        0, np.array([10.0, 6.0]), np.array([2.0, 2.0]))
    np.testing.assert_allclose(online, [2.0, 0.0])  # 8 req/s served on demand
    np.testing.assert_allclose(offline, [2.0, 1.0])  # busy: no idle throughput; at 6 of 8: a quarter of 4 req/s
    assert plan_liveput(inp).path[0][0][1] >= 3
    covered = replace(inp, base_online_rps=np.array([12.0]), base_offline_rps=np.array([8.0]))
    assert plan_liveput(covered).path[0] == ((1, 0),)  # the on-demand tier serves it all
    part = replace(inp, base_online_rps=np.array([6.0]), base_offline_rps=np.array([0.0]))
    assert plan_liveput(part).path[0][0][1] < plan_liveput(inp).path[0][0][1]


def test_beside_online_work_offline_work_gets_only_the_harvest_budget_s_rest() -> None:
    """One TP-1 model: 4 req/s of SLO capacity, 8 req/s offline alone, 3 req/s within the harvest budget."""
    from optimizers.liveput import served_usd

    def value(harvest, online):
        spec = (SpotModel("m", (1,), (4.0,), (8.0,), (5.0,), harvest),)
        inp = LiveputInput(16, 60.0, spec, np.ones(1), np.full((1, 1), 16.0), np.full((1, 1, 1), online),
                           np.full((1, 1, 1), 100.0), online_usd_per_request=0.0, offline_usd_per_request=1.0)
        return served_usd(inp, 0, 0, 0, 2)[0] / 60.0  # offline req/s served by 0, 1, 2 replicas

    # 2 req/s online on two replicas: all the compute online work leaves (8 × 1.5), or the harvest rest (3 × 2 − 2)
    assert value(None, 2.0) == pytest.approx([0.0, 4.0, 12.0])
    assert value((3.0,), 2.0) == pytest.approx([0.0, 1.0, 4.0])
    # no online work: the full offline rate
    assert value((3.0,), 0.0) == pytest.approx([0.0, 8.0, 16.0])
