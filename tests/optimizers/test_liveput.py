import numpy as np

from optimizers.liveput import (
    LiveputInput,
    SpotModel,
    config_value,
    plan_liveput,
    reactive_config,
    replica_value,
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
