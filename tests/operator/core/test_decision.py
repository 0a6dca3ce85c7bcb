"""The decision rules, on a two-option problem worked by hand.

Options: small ($1/h, serves 1 req/s of the one bucket) and big ($3/h, serves 4 req/s). At 4 req/s
the optimum is 1 x big ($3); 4 x small costs $4, 3 x small ($3) cannot serve 4 req/s.
"""
from __future__ import annotations

from melange.operator.core.decision import MOVE_COST_SHARE, covers, decide, move_cost
from melange.solver.buckets import BucketGrid
from melange.solver.ilp import IlpSettings
from melange.solver.options import GpuOption
from melange.solver.problem import Problem
from melange.solver.profiles import Profile
from melange.solver.solve import solve
from melange.solver.workload import make_workload

GRID = BucketGrid((100,), (100,))


def problem(rate: float, floor: int = 0) -> Problem:
    options = (GpuOption("small", 1.0, gpu="S", min_replicas=floor), GpuOption("big", 3.0, gpu="B"))
    profiles = (Profile("m", "S", GRID, ((1.0,),)), Profile("m", "B", GRID, ((4.0,),)))
    return Problem(make_workload(rate, GRID, [[1.0]], "w"), options, profiles)


def candidate(p: Problem, current=None):
    return solve(p, IlpSettings(current=current or {}, move_cost=move_cost(p)), mode="routable")


def run(current, rate=4.0, since=None, min_savings=5.0, cooldown=600.0, floor=0):
    p = problem(rate, floor)
    ok = covers(p, current or {}, IlpSettings(), "routable")
    return decide(current, candidate(p, current), p, ok, min_savings, cooldown, since)


def test_move_cost_is_a_small_share_of_the_cheapest_replica():
    assert move_cost(problem(1)) == MOVE_COST_SHARE * 1.0


def test_covers_by_hand():
    p = problem(4.0)
    assert covers(p, {"small": 4}, IlpSettings(), "routable")
    assert not covers(p, {"small": 3}, IlpSettings(), "routable")
    assert covers(p, {"small": 2, "big": 1}, IlpSettings(), "routable")
    assert not covers(p, {"big": 1}, IlpSettings(target_utilisation=0.9), "routable")  # 4 req/s > 0.9 x 4


def test_first_allocation():
    decision = run(None)
    assert decision.kind == "initial" and decision.target == {"small": 0, "big": 1}


def test_short_capacity_moves_at_once_despite_the_cooldown():
    decision = run({"small": 3, "big": 0}, since=1.0)
    assert decision.kind == "scale-up" and decision.target == {"small": 0, "big": 1}


def test_a_saving_above_the_threshold_waits_for_the_cooldown():
    kept = run({"small": 4, "big": 0}, since=100.0)  # $4 -> $3 saves 25%
    assert kept.kind == "keep" and kept.target == {"small": 4, "big": 0}
    assert kept.reason == "kept: saving 25.0% waits for the cooldown (100s of 10m passed)"
    moved = run({"small": 4, "big": 0}, since=600.0)
    assert moved.kind == "rebalance" and moved.target == {"small": 0, "big": 1}
    assert moved.reason == "saving 25.0%: $4.00/h -> $3.00/h"


def test_a_small_saving_is_kept_with_its_figure():
    # 5 x small ($5) serves 4 req/s; the optimum 1 x big ($3) saves 40%, below a 50% threshold.
    decision = run({"small": 5, "big": 0}, since=10_000.0, min_savings=50.0)
    assert decision.kind == "keep" and decision.reason == "kept: saving 40.0% < 50%"


def test_the_optimum_already_running_is_kept():
    decision = run({"small": 0, "big": 1})
    assert decision.kind == "keep" and decision.reason == "kept: already optimal at $3.00/h"


def test_zero_traffic_falls_to_the_floors_after_the_cooldown():
    assert run({"small": 1, "big": 1}, rate=0.0, since=60.0, floor=1).kind == "keep"
    decision = run({"small": 1, "big": 1}, rate=0.0, since=601.0, floor=1)
    assert decision.kind == "rebalance" and decision.target == {"small": 1, "big": 0}
    assert run({"small": 0, "big": 1}, rate=0.0, since=601.0).target == {"small": 0, "big": 0}
