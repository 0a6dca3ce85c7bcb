from __future__ import annotations

import itertools
import random

import pytest

from melange.solver.ilp import IlpSettings, Item, OptionSpec
from melange.solver.options import GpuOption
from melange.solver.problem import match_profiles
from melange.solver.profiles import Profile
from melange.solver.errors import InputError
from melange.solver.solve import allocate, paper_items, routable_items, single_type_replicas, solve
from melange.solver.workload import make_workload

from .brute_force import brute_force_cost
from .small_problem import GRID, problem

def test_single_type_baseline_is_ceil_of_total_load():
    p = problem()
    replicas = single_type_replicas(p, IlpSettings())
    assert replicas["small"] is None  # cannot serve in(100,1000] out(50,500]
    # By hand: big carries 4 req/s x (0.4/20 + 0.1/6 + 0.3/10 + 0.2/3) = 0.533 replicas -> 1; at 50%
    # utilisation 1.067 -> 2; a floor of 3 replicas in total -> 3.
    assert replicas["big"] == 1
    assert single_type_replicas(p, IlpSettings(target_utilisation=0.5))["big"] == 2
    assert single_type_replicas(p, IlpSettings(min_total_replicas=3))["big"] == 3


def test_report_savings_against_best_and_worst():
    options = [GpuOption("a", 1.0), GpuOption("b", 1.5), GpuOption("c", 3.0)]
    tables = {"a": ((10.0, 1.0), (1.0, 0.2)), "b": ((4.0, 4.0), (4.0, 1.0)), "c": ((6.0, 6.0), (6.0, 2.0))}
    report = solve(problem(rate=6.0, options=options, tables=tables), IlpSettings(slice_factor=2))
    # By hand, bucket rates 2.4, 0.6, 1.8, 1.2 req/s: a alone carries 0.24 + 0.6 + 1.8 + 6 = 8.64
    # replicas -> 9 x $1; b alone 0.6 + 0.15 + 0.45 + 1.2 = 2.4 -> 3 x $1.5; c alone 1.4 -> 2 x $3.
    assert report.single_type == {"a": 9.0, "b": 4.5, "c": 6.0}
    assert report.single_type_replicas == {"a": 9, "b": 3, "c": 2}
    assert report.best_single == ("b", 4.5) and report.worst_single == ("a", 9.0)
    # The mix, by brute force over every slice assignment: $4/h (1 x a + 2 x b).
    items = [Item("00", 2.4, (1 / 10, 1 / 4, 1 / 6)), Item("01", 0.6, (1 / 1, 1 / 4, 1 / 6)),
             Item("10", 1.8, (1 / 1, 1 / 4, 1 / 6)), Item("11", 1.2, (1 / 0.2, 1 / 1, 1 / 2))]
    specs = [OptionSpec(o.name, o.price_per_hour) for o in options]
    assert brute_force_cost(items, specs, IlpSettings(slice_factor=2)) == pytest.approx(4.0)
    assert report.allocation.cost_per_hour == pytest.approx(4.0)
    document = report.to_dict()
    assert document["savings_vs_best_single_percent"] == pytest.approx(100 * (4.5 - 4.0) / 4.5, abs=1e-4)
    assert document["savings_vs_worst_single_percent"] == pytest.approx(100 * (9.0 - 4.0) / 9.0, abs=1e-4)
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


def test_allocation_describes_costs_loads_and_splits():
    """By hand at 4 req/s: every allocation needs a big replica (small cannot serve in(100,1000]
    out(50,500]), and one big carries everything: 4 x (0.4/20 + 0.1/6 + 0.3/10 + 0.2/3) = 0.533."""
    allocation = solve(problem(), IlpSettings(), compare_modes=False).allocation
    small, big = allocation.options
    assert (small.replicas, small.cost_per_hour, small.request_rate, small.load, small.utilisation) == (0, 0, 0, 0, None)
    assert (big.replicas, big.gpus, big.cost_per_hour, big.request_rate) == (1, 1, 4.0, pytest.approx(4.0))
    assert big.load == pytest.approx(0.5333, abs=1e-4) and big.utilisation == pytest.approx(0.5333, abs=1e-4)
    assert [(s.label, s.index, s.rate, s.shares) for s in allocation.splits] == [
        ("in(0,100] out(0,50]", (0, 0), pytest.approx(1.6), {"small": 0.0, "big": 1.0}),
        ("in(0,100] out(50,500]", (0, 1), pytest.approx(0.4), {"small": 0.0, "big": 1.0}),
        ("in(100,1000] out(0,50]", (1, 0), pytest.approx(1.2), {"small": 0.0, "big": 1.0}),
        ("in(100,1000] out(50,500]", (1, 1), pytest.approx(0.8), {"small": 0.0, "big": 1.0})]
    assert (allocation.mode, allocation.status, allocation.gap, allocation.solver) == ("paper", "optimal", 0.0, "highs")


def test_routable_mode_is_solved_and_compared_with_the_paper_mode():
    report = solve(problem(share=((0.0, 0.0), (0.5, 0.5))), IlpSettings(), mode="routable")
    assert report.allocation.mode == "routable" and report.other_mode.mode == "paper"
    assert [(s.label, s.index) for s in report.allocation.splits] == [("in(100,1000]", (1,))]
    assert solve(problem(), IlpSettings(), compare_modes=False).other_mode is None


def test_unknown_mode_is_named():
    with pytest.raises(InputError) as error:
        allocate(problem(), IlpSettings(), "fast")
    assert str(error.value) == "mode: unknown mode 'fast' (allowed: paper, routable)"
    assert allocate(problem(), IlpSettings()).mode == "paper"


def test_report_carries_the_workload_and_profile_sources():
    p = problem()
    report = solve(p, IlpSettings(), compare_modes=False)
    assert report.rate == 4.0 and report.notes == p.workload.notes
    assert report.profile_sources == {"small": p.profiles[0].source, "big": p.profiles[1].source}


def test_routable_items_skip_empty_rows_and_cells():
    tables = {"small": ((8.0, 1.0), (2.0, None)), "big": ((20.0, 6.0), (10.0, 3.0))}
    items = routable_items(problem(tables=tables, share=((0.0, 0.2), (0.8, 0.0))))
    assert [(i.label, i.rate) for i in items] == [("in(0,100]", pytest.approx(0.8)), ("in(100,1000]", pytest.approx(3.2))]
    # Only out(50,500] is seen in the first row, only out(0,50] in the second (small serves it).
    assert items[0].seconds_per_request == pytest.approx((1 / 1.0, 1 / 6.0))
    assert items[1].seconds_per_request == pytest.approx((1 / 2.0, 1 / 10.0))


# small serves every bucket here: alone it carries 4 x (0.4/8 + 0.1/1 + 0.3/2 + 0.2/1) = 2 replicas ($2/h),
# big alone 0.533 -> 1 replica ($4/h).
SERVES_ALL = {"small": ((8.0, 1.0), (2.0, 1.0)), "big": ((20.0, 6.0), (10.0, 3.0))}


def with_small(rate=4.0, **small):
    return problem(rate=rate, options=[GpuOption("small", 1.0, **small), GpuOption("big", 4.0)], tables=SERVES_ALL)


def test_option_limits_reach_the_solver():
    assert solve(with_small(), IlpSettings()).allocation.replicas == {"small": 2, "big": 0}
    # a quota of 1 small: 1 small + 1 big costs $5, 1 big alone $4
    assert solve(with_small(max_replicas=1), IlpSettings()).allocation.replicas == {"small": 0, "big": 1}
    # no spot traffic allowed
    assert solve(with_small(spot=True), IlpSettings(max_spot_share=0.0)).allocation.replicas == {"small": 0, "big": 1}
    # a floor of 3 small replicas: they carry everything
    assert solve(with_small(min_replicas=3), IlpSettings()).allocation.replicas == {"small": 3, "big": 0}
    # moving costs $1 per replica: staying on 1 big ($4) beats 2 small plus 3 moves ($5)
    sticky = IlpSettings(current={"big": 1}, move_cost=1.0)
    assert solve(with_small(), sticky).allocation.replicas == {"small": 0, "big": 1}


def test_single_type_baselines_respect_quotas_spot_caps_and_floors():
    assert single_type_replicas(with_small(max_replicas=2), IlpSettings())["small"] == 2
    assert single_type_replicas(with_small(max_replicas=1), IlpSettings())["small"] is None
    assert single_type_replicas(with_small(spot=True), IlpSettings(max_spot_share=1.0))["small"] == 2
    assert single_type_replicas(with_small(spot=True), IlpSettings(max_spot_share=0.5))["small"] is None
    assert single_type_replicas(with_small(rate=0.5, spot=True), IlpSettings(max_spot_share=0.5))["small"] is None
    assert single_type_replicas(with_small(min_replicas=5), IlpSettings())["small"] == 5
