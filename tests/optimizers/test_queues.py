import itertools

import numpy as np
import pytest

from optimizers.queue_milp import solve_positions
from optimizers.queues import GroupJob, QueueSettings, Server, order_groups, residual_tokens, server_cost


def _jobs(rng, n, models=("a", "b")):
    return [GroupJob(f"g{i}", models[i % len(models)], int(rng.integers(1, 40)), 0.0, 0.0,
                     float(rng.uniform(1, 30)), float(4.0 ** -rng.integers(0, 2)))
            for i in range(n)]


def _with_lengths(jobs, mean=200.0):
    return [GroupJob(j.group_id, j.model, j.num_requests, j.num_requests * mean, j.num_requests * mean**2,
                     j.slack_s, j.weight) for j in jobs]


def test_local_search_never_worse_than_edf_and_keeps_every_group() -> None:
    rng = np.random.default_rng(0)
    jobs = _with_lengths(_jobs(rng, 60))
    servers = [Server(f"r{k}", "ab"[k % 2], 2000.0) for k in range(6)]
    _, edf = order_groups(jobs, servers, budget_s=0.0)
    out, best = order_groups(jobs, servers, budget_s=0.2)
    assert best.cost <= edf.cost + 1e-9
    placed = sorted(out[i].group_id.split("#")[0] for o in best.orders for i in o)
    assert sorted(set(placed)) == sorted(j.group_id for j in jobs)
    for k, order in enumerate(best.orders):  # groups only go to replicas of their model
        assert all(out[i].model == servers[k].model for i in order)


def test_small_milp_finds_the_best_order_by_enumeration() -> None:
    server = Server("r", "a", 1000.0)
    jobs = [GroupJob(f"g{i}", "a", 1, m, 0.0, s, w) for i, (m, s, w) in
            enumerate([(3000, 4.0, 1.0), (500, 1.0, 4.0), (2000, 9.0, 1.0), (1000, 2.0, 2.0)])]
    order = solve_positions(jobs, server, time_limit_s=5.0)

    def lateness(o):
        t, total = 0.0, 0.0
        for i in o:
            t += jobs[i].mean_tokens / server.tokens_per_s
            total += jobs[i].weight * max(0.0, t - jobs[i].slack_s)
        return total

    assert lateness(order) == min(lateness(list(p)) for p in itertools.permutations(range(4)))


def test_small_groups_use_the_skewed_distribution() -> None:
    server = Server("r", "a", 100.0)
    jobs = [GroupJob("ahead", "a", 3, 600.0, 3 * 200.0**2, 100.0, 1.0),
            GroupJob("me", "a", 1, 200.0, 200.0**2, 5.0, 1.0)]
    cost = server_cost(jobs, server, [0, 1], QueueSettings())
    assert 0 < cost < 1  # gamma tail: a chance, not a certainty, that 600 expected tokens take > 5 s at 100 tok/s


def test_running_requests_past_their_p99_are_re_estimated_longer() -> None:
    early, late_flag = residual_tokens(200.0, 200.0**2, 50, 2.326)
    assert early == 150.0 and not late_flag
    rest, past = residual_tokens(200.0, 200.0**2, 2000, 2.326)
    assert past and rest > 150.0


def test_search_packs_same_model_groups_where_edf_pays_a_swap_at_every_change() -> None:
    """One replica (model a, 2 s to swap models) and groups of a and b with interleaved deadlines, 1 s of work
    each: EDF alternates a, b, a, … and pays a swap at every change, so all but the first group start late. The
    enumerated optimum serves the a groups first and swaps once; the search must find it."""
    server = Server("r", "a", 1000.0, swap_s=2.0)
    spec = [("a1", "a", 0.5), ("b1", "b", 2.5), ("a2", "a", 3.5), ("b2", "b", 5.2), ("a3", "a", 5.5),
            ("b3", "b", 7.5)]
    jobs = [GroupJob(g, m, 1, 1000.0, 1.0, slack, 1.0) for g, m, slack in spec]
    settings = QueueSettings()
    _, edf = order_groups(jobs, [server], budget_s=0.0)
    out, best = order_groups(jobs, [server], budget_s=1.0)
    optimum = min(server_cost(jobs, server, list(p), settings) for p in itertools.permutations(range(len(jobs))))
    assert edf.cost == pytest.approx(5.0, abs=1e-3)  # every group after the first misses
    assert best.cost == pytest.approx(optimum, abs=1e-6) and optimum < edf.cost - 3
    assert best.steps.get("regroup", 0) >= 1
    assert [out[i].model for i in best.orders[0]][:3] == ["a", "a", "a"]
