"""A small LP-based branch and bound for models with few integer columns, on HiGHS's LP solver.

The ILP's first stage (solver/ilp.py) has integer replica counts (one per option, plus node counts for
node-priced options) and continuous slice shares: a handful of integer columns over a few hundred
continuous ones. HiGHS's MIP solver spends 15-50 ms on such a model in presolve, symmetry detection,
cuts and sub-MIP heuristics before its few branches; plain branch and bound on the integer columns,
re-solving one warm-started LP per node, proves the same optimum in a few milliseconds. It is the
textbook method, exact up to the same gap tolerances the MIP solver is given: a node is pruned only
when its LP bound cannot beat the incumbent by more than the tolerated gap.

Past `node_limit` nodes it gives up (status "limit") and the caller runs HiGHS's MIP solver instead.
`round_by_groups` is the second stage's helper: whole slices for fixed replicas by LP-guided rounding.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np
import pulp

INTEGRALITY = 1e-6  # HiGHS's mip_feasibility_tolerance: a value this close to an integer counts as one


@dataclass(frozen=True)
class BranchResult:
    """`status`: optimal, infeasible, or limit (gave up; nothing proven). `values` by PuLP variable name."""

    status: str
    objective: float | None
    values: dict[str, float] | None
    nodes: int


def _prunes(bound: float, best: float, gap_rel: float, gap_abs: float) -> bool:
    """Whether a node whose LP bound is `bound` cannot improve the incumbent `best` beyond the gap."""
    return bound >= best - max(gap_abs, gap_rel * abs(best))


def branch_and_bound(model: pulp.LpProblem, gap_rel: float, gap_abs: float, node_limit: int = 2000) -> BranchResult:
    """Solve `model` (minimisation) by best-first branch and bound on its integer columns."""
    solver = pulp.HiGHS(msg=False, mip=False, threads=1, presolve="off")
    solver.createAndConfigureSolver(model)
    solver.buildSolverModel(model)
    highs = model.solverModel
    variables = model.variables()
    integers = [v.index for v in variables if v.cat == pulp.LpInteger]
    lp = highs.getLp()
    lower0, upper0 = list(lp.col_lower_), list(lp.col_upper_)
    nodes = 0

    columns = np.array(integers, dtype=np.int32)
    base_lower = np.array([lower0[j] for j in integers], dtype=np.float64)
    base_upper = np.array([upper0[j] for j in integers], dtype=np.float64)
    position = {j: i for i, j in enumerate(integers)}

    def solve(bounds: dict[int, tuple[float, float]]) -> tuple[float, list[float]] | None:
        nonlocal nodes
        nodes += 1
        low, high = base_lower.copy(), base_upper.copy()
        for j, (a, b) in bounds.items():
            low[position[j]], high[position[j]] = a, b
        highs.changeColsBounds(len(integers), columns, low, high)
        highs.run()
        if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        return highs.getInfo().objective_function_value, list(highs.getSolution().col_value)

    root = solve({})
    if root is None:
        status = highs.getModelStatus()
        infeasible = status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible)
        return BranchResult("infeasible" if infeasible else "limit", None, None, nodes)
    best, best_x = math.inf, None
    # An incumbent at once: the root's integer columns rounded up and fixed (more replicas than the
    # split needs fit it, when the quotas allow), the continuous ones solved again.
    rounded = {j: (float(math.ceil(root[1][j] - INTEGRALITY)),) * 2 for j in integers}
    if all(lower0[j] <= rounded[j][0] <= upper0[j] for j in integers):
        fixed = solve(rounded)
        if fixed is not None:
            best, best_x = fixed
    queue: list[tuple[float, int, dict[int, tuple[float, float]], list[float]]] = [(root[0], 0, {}, root[1])]
    order = 1
    while queue:
        bound, _, bounds, x = heapq.heappop(queue)
        if _prunes(bound, best, gap_rel, gap_abs):
            continue
        fractional = [(min(x[j] - math.floor(x[j]), math.ceil(x[j]) - x[j]), j) for j in integers
                      if abs(x[j] - round(x[j])) > INTEGRALITY]
        if not fractional:
            best, best_x = bound, x
            continue
        if nodes >= node_limit:
            return BranchResult("limit", None, None, nodes)
        _, j = max(fractional)
        low, high = bounds.get(j, (lower0[j], upper0[j]))
        for child in ({**bounds, j: (low, float(math.floor(x[j])))}, {**bounds, j: (float(math.ceil(x[j])), high)}):
            if child[j][0] > child[j][1]:
                continue
            solved = solve(child)
            if solved is not None and not _prunes(solved[0], best, gap_rel, gap_abs):
                heapq.heappush(queue, (solved[0], order, child, solved[1]))
                order += 1
    if best_x is None:
        return BranchResult("infeasible", None, None, nodes)
    values = {v.name: _snap(best_x[v.index], v.cat == pulp.LpInteger) for v in variables}
    return BranchResult("optimal", best, values, nodes)


def _snap(value: float, integer: bool) -> float:
    return float(round(value)) if integer else value


def load_values(model: pulp.LpProblem, result: BranchResult) -> None:
    """Write the result into the model the way PuLP's own solve does (values and statuses)."""
    if result.status == "optimal":
        model.assignVarsVals(result.values or {})
        model.status, model.sol_status = pulp.LpStatusOptimal, pulp.LpSolutionOptimal
    elif result.status == "infeasible":
        model.status, model.sol_status = pulp.LpStatusInfeasible, pulp.LpSolutionInfeasible


def round_by_groups(model: pulp.LpProblem, groups: Sequence[Sequence[pulp.LpVariable]], total: int,
                    node_limit: int = 200) -> dict[str, float] | None:
    """Whole values for `model`'s LP by fixing one group at a time: `groups` are sets of columns that
    sum to `total` (an item's slices over the options), in the order to fix them. While some group's LP
    values are fractional, the first such group is fixed to the nearest whole split (the one the LP
    accepts, nearest first) and the LP solved again, so the other groups' continuous values make room
    for it, whole items moving included. No backtracking: None when no nearby split of a group is
    feasible or after `node_limit` LPs (the caller then runs a MIP). Values by variable name."""
    solver = pulp.HiGHS(msg=False, mip=False, threads=1, presolve="off")
    solver.createAndConfigureSolver(model)
    solver.buildSolverModel(model)
    highs = model.solverModel
    lps = 0

    def run() -> list[float] | None:
        nonlocal lps
        lps += 1
        highs.run()
        if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        return list(highs.getSolution().col_value)

    def descend(x: list[float], fixed: frozenset[int]) -> list[float] | None:
        pending = [i for i, group in enumerate(groups) if i not in fixed
                   and any(abs(x[v.index] - round(x[v.index])) > INTEGRALITY for v in group)]
        if not pending:
            return x
        i = pending[0]
        group = groups[i]
        index = np.array([v.index for v in group], dtype=np.int32)
        for split in _nearest_splits([x[v.index] for v in group], total):
            if lps >= node_limit:
                return None
            values = np.array(split, dtype=np.float64)
            highs.changeColsBounds(len(group), index, values, values)
            following = run()
            if following is not None:
                found = descend(following, fixed | {i})
                if found is not None:
                    return found
        lower = np.array([-highspy.kHighsInf if v.lowBound is None else v.lowBound for v in group], dtype=np.float64)
        upper = np.array([highspy.kHighsInf if v.upBound is None else v.upBound for v in group], dtype=np.float64)
        highs.changeColsBounds(len(group), index, lower, upper)
        return None

    root = run()
    found = None if root is None else descend(root, frozenset())
    if found is None:
        return None
    return {v.name: _snap(found[v.index], v.cat == pulp.LpInteger) for v in model.variables()}


def _nearest_splits(values: Sequence[float], total: int, limit: int = 6) -> list[list[int]]:
    """Up to `limit` ways to split `total` whole units over columns near `values` (which sum to
    `total`): floors, plus the units left over given to columns with a fractional part, nearest first."""
    floors = [math.floor(v + INTEGRALITY) for v in values]
    left = total - sum(floors)
    candidates = [j for j, v in enumerate(values) if v - floors[j] > INTEGRALITY]
    if left < 0 or left > len(candidates):
        return []
    splits = []
    for chosen in itertools.combinations(candidates, left):
        split = list(floors)
        for j in chosen:
            split[j] += 1
        splits.append((sum(abs(s - v) for s, v in zip(split, values)), split))
    return [split for _, split in sorted(splits)[:limit]]


