from __future__ import annotations

import itertools
import random

import pytest

from melange.solver.buckets import BucketGrid
from melange.solver.ilp import IlpSettings
from melange.solver.options import GpuOption
from melange.solver.problem import match_profiles
from melange.solver.profiles import Profile
from melange.solver.solve import paper_items, routable_items, single_type_replicas, solve
from melange.solver.workload import make_workload

GRID = BucketGrid((100, 1000), (50, 500))


def problem(rate=4.0, options=None, tables=None, share=((0.4, 0.1), (0.3, 0.2))):
    options = options or [GpuOption("small", 1.0), GpuOption("big", 4.0)]
    tables = tables or {"small": ((8.0, 1.0), (2.0, None)), "big": ((20.0, 6.0), (10.0, 3.0))}
    profiles = [Profile("m", o.gpu_type, GRID, tables[o.name]) for o in options]
    return match_profiles(make_workload(rate, GRID, [list(r) for r in share], "w"), options, profiles)


def test_single_type_baseline_is_ceil_of_total_load():
    p = problem()
    replicas = single_type_replicas(p, IlpSettings())
    assert replicas["small"] is None  # cannot serve in(100,1000] out(50,500]
    big_load = 4 * (0.4 / 20 + 0.1 / 6 + 0.3 / 10 + 0.2 / 3)
    assert replicas["big"] == -(-big_load // 1)


def test_report_savings_against_best_and_worst():
    options = [GpuOption("a", 1.0), GpuOption("b", 1.5), GpuOption("c", 3.0)]
    tables = {"a": ((10.0, 1.0), (1.0, 0.2)), "b": ((4.0, 4.0), (4.0, 1.0)), "c": ((6.0, 6.0), (6.0, 2.0))}
    report = solve(problem(rate=6.0, options=options, tables=tables), IlpSettings())
    costs = [c for c in report.single_type.values() if c is not None]
    best, worst = min(costs), max(costs)
    assert report.best_single[1] == best and report.worst_single[1] == worst
    assert report.allocation.cost_per_hour <= best + 1e-9
    document = report.to_dict()
    assert document["savings_vs_best_single_percent"] == pytest.approx(
        100 * (best - report.allocation.cost_per_hour) / best, abs=1e-4)
    assert set(document) >= {"status", "cost_per_hour", "replicas", "single_type"}


def test_routable_mode_costs_at_least_the_paper_mode():
    rng = random.Random(11)
    for _ in range(30):
        tables = {name: tuple(tuple(rng.uniform(0.5, 20) for _ in range(2)) for _ in range(2))
                  for name in ("small", "big")}
        share = [[rng.random() for _ in range(2)] for _ in range(2)]
        total = sum(map(sum, share))
        p = problem(rate=rng.uniform(1, 30), tables=tables,
                    share=tuple(tuple(v / total for v in row) for row in share))
        report = solve(p, IlpSettings(slice_factor=4))
        assert report.other_mode.mode == "routable"
        assert report.other_mode.cost_per_hour >= report.allocation.cost_per_hour - 1e-9


def test_routable_items_average_over_the_output_mix():
    p = problem()
    items = routable_items(p)
    assert [i.label for i in items] == ["in(0,100]", "in(100,1000]"]
    assert items[0].rate == pytest.approx(2.0)
    assert items[0].seconds_per_request[0] == pytest.approx(0.8 / 8.0 + 0.2 / 1.0)
    assert items[1].seconds_per_request[0] is None  # small cannot serve one output bucket seen there


def test_splits_and_utilisation_are_consistent():
    report = solve(problem(rate=10.0), IlpSettings())
    allocation = report.allocation
    for split in allocation.splits:
        assert sum(split.shares.values()) == pytest.approx(1.0)
    for use in allocation.options:
        if use.replicas:
            assert 0 < use.utilisation <= 1 + 1e-6
    assert sum(u.request_rate for u in allocation.options) == pytest.approx(10.0)
    assert len(paper_items(problem(rate=10.0))) == len(allocation.splits)


def test_tensor_parallel_option_costs_its_gpus():
    options = [GpuOption("one", 2.0, gpu="X"), GpuOption("two", 2.0, gpu="X", gpus_per_replica=2)]
    profiles = [Profile("m", "X", GRID, ((1.0, 1.0), (1.0, 1.0))),
                Profile("m", "X", GRID, ((3.0, 3.0), (3.0, 3.0)), gpus_per_replica=2)]
    p = match_profiles(make_workload(3.0, GRID, [[1.0, 0.0], [0.0, 0.0]], "w"), options, profiles)
    report = solve(p, IlpSettings())
    assert report.allocation.replicas == {"one": 0, "two": 1}
    assert report.allocation.cost_per_hour == pytest.approx(4.0)
    assert report.allocation.options[1].gpus == 2


def test_slice_factor_one_puts_each_bucket_on_one_option():
    report = solve(problem(rate=7.0), IlpSettings(slice_factor=1))
    for split in report.allocation.splits:
        assert sorted(split.shares.values())[-1] == 1.0


def test_more_slices_never_cost_more():
    for factor_small, factor_large in itertools.pairwise([1, 2, 4, 8]):
        small = solve(problem(rate=9.0), IlpSettings(slice_factor=factor_small), compare_modes=False)
        large = solve(problem(rate=9.0), IlpSettings(slice_factor=factor_large), compare_modes=False)
        if factor_large % factor_small == 0:
            assert large.allocation.cost_per_hour <= small.allocation.cost_per_hour + 1e-9
