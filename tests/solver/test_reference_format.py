from __future__ import annotations

import copy

import pytest

from melange.solver.errors import InfeasibleError, InputError
from melange.solver.ilp import IlpSettings
from melange.solver.reference_format import is_reference_format, problem_from_reference
from melange.solver.solve import solve

EXAMPLE = {"gpu_info": {"A10G": {"cost": 1.01, "tputs": [[2, 1], [5, 2]]},
                        "A100-80GB": {"cost": 3.67, "tputs": [[20, 20], [40, 20]]}},
           "workload_distribution": [[0.2, 0.1], [0.5, 0.2]], "total_request_rate": 30.0, "slice_factor": 1}


def test_reads_the_reference_example():
    assert is_reference_format(EXAMPLE)
    problem, slice_factor = problem_from_reference(EXAMPLE, "example.json")
    assert slice_factor == 1 and problem.workload.grid.indexed
    report = solve(problem, IlpSettings(slice_factor=slice_factor))
    # A10G load: 6/2+3/1+15/5+6/2 = 12 -> 12 x 1.01; A100: 0.3+0.15+0.375+0.3 = 1.125 -> 2 x 3.67.
    assert report.single_type == {"A10G": pytest.approx(12.12), "A100-80GB": pytest.approx(7.34)}
    # The optimum by hand (slice factor 1: each bucket whole on one type). Each bucket costs 3 A10G
    # replicas, or 0.3/0.15/0.375/0.3 of an A100. One A100 holds any three buckets (at most 0.975)
    # but not all four (1.125), so the fourth needs 3 x A10G: 3 x 1.01 + 3.67 = $6.70/h. Every other
    # A100 count costs more: none needs 12 x A10G ($12.12), two cost $7.34 on their own.
    assert report.allocation.cost_per_hour == pytest.approx(6.70)
    assert report.allocation.replicas == {"A10G": 3, "A100-80GB": 1}


def test_zero_or_missing_throughput_means_cannot_serve():
    data = copy.deepcopy(EXAMPLE)
    data["gpu_info"]["A10G"]["tputs"] = [[2, 0], [5]]
    problem, _ = problem_from_reference(data, "f")
    assert problem.profiles[0].max_rps == ((2.0, None), (5.0, None))


def test_bucket_nobody_serves_is_named_by_index():
    data = copy.deepcopy(EXAMPLE)
    data["gpu_info"]["A10G"]["tputs"] = [[2, 1], [5, -1]]
    data["gpu_info"]["A100-80GB"]["tputs"] = [[20, 20], [40]]
    problem, _ = problem_from_reference(data, "f")
    with pytest.raises(InfeasibleError, match=r"in#1 out#1"):
        solve(problem, IlpSettings())


@pytest.mark.parametrize("change,where", [
    (lambda d: d.update(total_request_rate=-1), "f.rate"),
    (lambda d: d.update(slice_factor=0), "f.slice_factor"),
    (lambda d: d["gpu_info"]["A10G"].update(cost=float("nan")), "f.gpu_info.A10G.cost"),
    (lambda d: d["gpu_info"]["A10G"].update(tputs=[[float("nan"), 1], [1, 1]]), "f.gpu_info.A10G.tputs[0][0]"),
    (lambda d: d.update(workload_distribution=[[0.5, 0.5], [0.0]]), "f.workload_distribution[1]"),
    (lambda d: d.update(workload_distribution=[[0.5, 0.5], [0.5, 0.5]]), "f.distribution"),
    (lambda d: d.update(gpu_info={}), "f.gpu_info"),
    (lambda d: d["gpu_info"]["A10G"].pop("cost"), "f.gpu_info.A10G"),
])
def test_bad_reference_files_name_the_field(change, where):
    data = copy.deepcopy(EXAMPLE)
    change(data)
    with pytest.raises(InputError) as error:
        problem_from_reference(data, "f")
    assert str(error.value).startswith(where)


def test_paper_rate_one_is_reproduced(paper_data):
    from melange.solver.inputs import load_bundle
    loaded = load_bundle(paper_data / "early-profiles" / "melange_config_arena_6x6_rate1.json")
    report = solve(loaded.problem, IlpSettings(slice_factor=loaded.settings["slice_factor"]))
    assert report.allocation.replicas == {"L4": 1, "A10G": 1, "A100": 0, "H100": 0}
    assert report.allocation.cost_per_hour == pytest.approx(1.71)
    assert report.savings_percent(report.single_type["H100"]) == pytest.approx(77.25, abs=0.01)
    assert report.savings_percent(report.single_type["A100"]) == pytest.approx(53.41, abs=0.01)
    assert report.savings_percent(report.single_type["L4"]) == pytest.approx(18.57, abs=0.01)
