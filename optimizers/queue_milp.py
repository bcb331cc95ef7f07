"""Exact ordering of a few groups on one replica: a position-indexed MILP (QLM's formulation, soft deadlines).

y[i, k] = 1 when group i takes position k; the completion of position k is the mean tokens of positions ≤ k over
the token rate; lateness ℓᵢ ≥ completion − slack is weighted by priority × requests. Unlike QLM's hard
deadlines it is always feasible; it runs only on small subproblems (QLM's own MILP takes 10–16 s at 10 groups with
HiGHS, see bench/solver_scaling.py), solved by HiGHS through `scipy.optimize.milp`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


def solve_positions(jobs: Sequence, server, *, time_limit_s: float, node_limit: int | None = None) -> list[int] | None:
    """Order minimising weighted mean lateness; None if HiGHS found nothing in time (or within `node_limit`
    branch-and-bound nodes: a work limit, for deterministic planning)."""
    n = len(jobs)
    if n == 0 or time_limit_s <= 0:
        return None
    dur = np.array([j.mean_tokens / max(server.tokens_per_s, 1e-9) for j in jobs])
    slack = np.array([min(j.slack_s, 1e6) for j in jobs])
    weight = np.array([j.weight * j.num_requests for j in jobs])
    base = server.busy_tokens / max(server.tokens_per_s, 1e-9)
    # Variables: y (n·n, position-major i*n+k), C_k completion of position k (n), ℓ_i lateness (n).
    ny = n * n
    cost = np.concatenate([np.zeros(ny + n), weight])
    rows, lo, hi = [], [], []

    def row() -> np.ndarray:
        return np.zeros(ny + 2 * n)

    for i in range(n):  # each group one position
        r = row(); r[[i * n + k for k in range(n)]] = 1; rows.append(r); lo.append(1); hi.append(1)
    for k in range(n):  # each position one group
        r = row(); r[[i * n + k for i in range(n)]] = 1; rows.append(r); lo.append(1); hi.append(1)
    for k in range(n):  # C_k = base + Σ_{k' ≤ k} Σ_i dur_i y[i, k']
        r = row(); r[ny + k] = 1
        for i in range(n):
            for kk in range(k + 1):
                r[i * n + kk] = -dur[i]
        rows.append(r); lo.append(base); hi.append(base)
    big = base + dur.sum() + 1.0
    for i in range(n):  # ℓ_i ≥ C_k − slack_i − M(1 − y[i, k])
        for k in range(n):
            r = row(); r[ny + 2 * n - n + i] = 1; r[ny + k] = -1; r[i * n + k] = -big
            rows.append(r); lo.append(-slack[i] - big); hi.append(np.inf)
    integrality = np.concatenate([np.ones(ny), np.zeros(2 * n)])
    bounds = Bounds(np.zeros(ny + 2 * n), np.concatenate([np.ones(ny), np.full(2 * n, np.inf)]))
    res = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality, bounds=bounds,
               options={"time_limit": float(time_limit_s), "disp": False}
               | ({"node_limit": int(node_limit)} if node_limit is not None else {}))
    if res.x is None:
        return None
    y = res.x[:ny].reshape(n, n)
    return [int(np.argmax(y[:, k])) for k in range(n)]
