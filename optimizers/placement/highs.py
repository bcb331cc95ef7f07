"""A Pyomo model compiled once to matrices and handed to HiGHS whole.

Pyomo's persistent solver interfaces add variables and rows one at a time, which costs more than solving a
placement LP. `CompiledProgram` uses Pyomo's `LinearStandardFormCompiler` (one pass, numpy/scipy output) and
passes the matrices to `highspy` in one call; the same program then serves the LP relaxation, the rounded
repair and the warm-started MIP without being rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler


@dataclass
class Solution:
    """One HiGHS run: column values (None when nothing feasible was found), objective, status, bound."""

    values: np.ndarray | None
    objective: float | None
    status: str  # optimal | time_limit | infeasible | …
    bound: float | None

    @property
    def gap(self) -> float | None:
        if self.objective is None or self.bound is None or not np.isfinite(self.bound):
            return None
        return abs(self.objective - self.bound) / max(abs(self.objective), 1e-9)


class CompiledProgram:
    """A linear Pyomo model as HiGHS matrices, with its columns' bounds and integrality for re-solves."""

    def __init__(self, model: pyo.ConcreteModel) -> None:
        info = LinearStandardFormCompiler().write(model, mixed_form=True)
        self.columns = info.columns
        self.column_of = {id(v): i for i, v in enumerate(self.columns)}
        self.offset = float(info.c_offset[0]) if len(info.c_offset) else 0.0
        self.cost = np.asarray(info.c.todense()).ravel() if info.c.shape[0] else np.zeros(len(self.columns))
        inf = highspy.kHighsInf
        self.lower = np.array([v.lb if v.lb is not None else -inf for v in self.columns], dtype=float)
        self.upper = np.array([v.ub if v.ub is not None else inf for v in self.columns], dtype=float)
        self.integer = np.array([v.is_integer() or v.is_binary() for v in self.columns])
        kinds = np.array([r.bound_type for r in info.rows])
        rhs = np.asarray(info.rhs, dtype=float)
        self.row_lower = np.where(kinds >= 0, np.where(kinds == 0, rhs, -inf), rhs)
        self.row_upper = np.where(kinds <= 0, np.where(kinds == 0, rhs, inf), rhs)
        self.matrix = info.A.tocsr()

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    @property
    def num_rows(self) -> int:
        return int(self.matrix.shape[0])

    def index(self, var: pyo.Var) -> int | None:
        """Column of a Pyomo variable (None: the compiler dropped it as unused or fixed)."""
        return self.column_of.get(id(var))

    def solve(self, *, time_limit_s: float, integer: bool = True, mip_gap: float = 0.01,
              lower: np.ndarray | None = None, upper: np.ndarray | None = None,
              start: np.ndarray | None = None, max_nodes: int | None = None) -> Solution:
        """Solve (as a MIP if `integer`, else the LP relaxation) with optional bound overrides and a MIP start.
        `max_nodes` caps the branch-and-bound nodes: a limit on work, not time, so the result does not depend on
        how busy the machine is (single-threaded HiGHS is deterministic)."""
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("time_limit", float(max(time_limit_s, 0.01)))
        h.setOptionValue("mip_rel_gap", mip_gap)
        if max_nodes is not None:
            h.setOptionValue("mip_max_nodes", int(max_nodes))
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.num_columns, self.num_rows
        lp.col_cost_ = self.cost
        lp.offset_ = self.offset
        lp.col_lower_ = self.lower if lower is None else lower
        lp.col_upper_ = self.upper if upper is None else upper
        lp.row_lower_, lp.row_upper_ = self.row_lower, self.row_upper
        csc = self.matrix.tocsc()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = csc.indptr, csc.indices, csc.data
        if integer and self.integer.any():
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                               for i in self.integer]
        h.passModel(lp)
        if start is not None and integer:
            sol = highspy.HighsSolution()
            sol.col_value = list(start)
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        return self._result(h, integer)

    def _result(self, h: highspy.Highs, integer: bool) -> Solution:
        status = h.getModelStatus()
        values = np.asarray(h.getSolution().col_value, dtype=float)
        info = h.getInfo()
        has = info.primal_solution_status == 2 or (integer and info.mip_node_count >= 0 and
                                                   np.isfinite(info.objective_function_value) and
                                                   info.primal_solution_status > 0)
        name = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kTimeLimit: "time_limit",
                highspy.HighsModelStatus.kInfeasible: "infeasible"}.get(status, str(status).split(".")[-1])
        if not has or len(values) != self.num_columns:
            return Solution(None, None, name, None)
        bound = info.mip_dual_bound if integer and self.integer.any() else info.objective_function_value
        return Solution(values, float(info.objective_function_value), name, float(bound))

    def load(self, values: np.ndarray) -> None:
        """Write column values back into the Pyomo variables (rounding integer columns)."""
        for v, x, is_int in zip(self.columns, values, self.integer):
            v.set_value(round(x) if is_int else float(x), skip_validation=True)
