"""The first stage's branch and bound and the second stage's roundings against HiGHS's own MIP solver.

Expected costs come from an independent solve: the whole counting-form model (every slice count
integer) handed to HiGHS's MIP solver as one model, not through the two stages, on the paper-size
instance (4 GPU types, the Arena mix, the public Llama-2-7B profiles, slice factor 8) at rates 1-64,
and on random models with few integer columns (brute force covers small instances in test_ilp.py).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import pulp
import pytest

from melange.solver import ilp
from melange.solver.branching import branch_and_bound, round_by_groups
from melange.solver.ilp import IlpSettings, solve_ilp
from melange.testing.paper_instance import paper_instance

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "early-profiles"
def whole_model_cost(items, options, settings) -> float:
    """The counting-form MIP in one piece, by HiGHS's MIP solver (no stages, no rounding)."""
    model, n, _ = ilp._build(items, options, settings, integer_slices=True)
    ilp._run(model, "highs", None)
    assert model.sol_status == pulp.LpSolutionOptimal
    return sum(o.cost(round(v.varValue)) for o, v in zip(options, n))


@pytest.mark.parametrize("rate", [1, 2, 4, 8, 12, 16, 24, 32, 48, 64])
def test_paper_instance_costs_match_the_whole_model(rate):
    items, options = paper_instance(rate, DATA)
    settings = IlpSettings(slice_factor=8)
    solution = solve_ilp(items, options, settings)
    assert solution.status == "optimal"
    assert solution.cost_per_hour == pytest.approx(whole_model_cost(items, options, settings), abs=1e-9)
    # the answer is whole and serves everything within its replicas
    assert all(sum(row) == 8 for row in solution.slices)
    assert all(load <= r + ilp.LOAD_TOLERANCE for load, r in zip(solution.loads, solution.replicas))


def random_model(seed: int) -> pulp.LpProblem:
    """min c.n + d.z over integer n (few) and continuous z, with covering rows mixing both."""
    rng = random.Random(seed)
    model = pulp.LpProblem("random", pulp.LpMinimize)
    n = [model.add_variable(f"n{g}", lowBound=0, upBound=rng.choice([None, 6]), cat=pulp.LpInteger)
         for g in range(rng.randint(1, 5))]
    z = [model.add_variable(f"z{k}", lowBound=0, upBound=rng.choice([None, 3.0])) for k in range(rng.randint(0, 6))]
    model += pulp.lpSum(rng.uniform(0.3, 5) * v for v in n) + pulp.lpSum(rng.uniform(0.1, 2) * v for v in z)
    for r in range(rng.randint(1, 5)):
        model += pulp.lpSum(rng.uniform(0, 2) * v for v in n) + pulp.lpSum(rng.uniform(0, 1) * v for v in z) \
            >= rng.uniform(0.5, 9), f"cover{r}"
    return model


@pytest.mark.parametrize("seed", range(60))
def test_branch_and_bound_matches_the_mip_solver(seed):
    mip = random_model(seed)
    ilp._run(mip, "highs", None)
    ours = random_model(seed)
    with ilp._quiet_stdout():
        result = branch_and_bound(ours, 1e-9, 1e-7)
    if mip.sol_status != pulp.LpSolutionOptimal:
        assert result.status == "infeasible"
        return
    assert result.status == "optimal"
    assert result.objective == pytest.approx(pulp.value(mip.objective), abs=1e-6)
    for v in ours.variables():
        if v.cat == pulp.LpInteger:
            assert result.values[v.name] == round(result.values[v.name])


def test_a_node_limit_gives_up_rather_than_guessing():
    items, options = paper_instance(48, DATA)
    model, *_ = ilp._build(items, options, IlpSettings(slice_factor=8), integer_slices=False)
    with ilp._quiet_stdout():
        assert branch_and_bound(model, 1e-9, 1e-7, node_limit=1).status == "limit"


def test_grouped_rounding_keeps_every_group_whole_and_within_capacity():
    # two items of 4 slices over two options with capacity 3 slice-loads each (every slice load 1):
    # the LP may split both; whole groups must be 3 + 1 and 1 + 3 (or the like), never above 3.
    model = pulp.LpProblem("groups", pulp.LpMinimize)
    y = {(k, g): model.add_variable(f"y_{k}_{g}", lowBound=0, upBound=4, cat=pulp.LpInteger)
         for k in range(2) for g in range(2)}
    for k in range(2):
        model += y[k, 0] + y[k, 1] == 4, f"all_{k}"
    for g in range(2):
        model += y[0, g] + y[1, g] <= 4.5, f"capacity_{g}"
    model += y[0, 0] + 1.01 * y[0, 1] + y[1, 0] + 0.99 * y[1, 1]
    with ilp._quiet_stdout():
        values = round_by_groups(model, [[y[0, 0], y[0, 1]], [y[1, 0], y[1, 1]]], 4)
    assert values is not None
    assert all(values[v.name] == math.floor(values[v.name]) for v in y.values())
    assert all(values[f"y_{k}_0"] + values[f"y_{k}_1"] == 4 for k in range(2))
    assert all(values[f"y_0_{g}"] + values[f"y_1_{g}"] <= 4 for g in range(2))
