from __future__ import annotations

import pytest

from melange.operator.router.routing_config import table_from_dict
from melange.solver.buckets import BucketGrid
from melange.solver.errors import InputError
from melange.solver.ilp import IlpSettings
from melange.solver.options import GpuOption
from melange.solver.problem import match_profiles
from melange.solver.profiles import Profile
from melange.solver.routing import routing_table
from melange.solver.solve import allocate
from melange.solver.workload import make_workload

GRID = BucketGrid((100, 1000), (50, 500))


def problem():
    options = [GpuOption("small", 1.0), GpuOption("big", 4.0)]
    profiles = [Profile("m", "small", GRID, ((8.0, 1.0), (2.0, None))), Profile("m", "big", GRID, ((20.0, 6.0), (10.0, 3.0)))]
    return match_profiles(make_workload(6.0, GRID, [[0.4, 0.1], [0.3, 0.2]], "w"), options, profiles)


@pytest.mark.parametrize("mode", ["paper", "routable"])
def test_table_from_allocation_is_valid_and_matches_splits(mode):
    allocation = allocate(problem(), IlpSettings(), mode)
    urls = {"small": "http://small:8000", "big": ["http://big-0:8000", "http://big-1:8000"]}
    document = routing_table(allocation, GRID, urls)
    table = table_from_dict(document, "table")
    for weights in table.input_weights:
        assert sum(weights.values()) == pytest.approx(1.0)
    for split in allocation.splits:
        expected = {k: v for k, v in split.shares.items() if v > 0}
        if mode == "routable":
            assert table.input_weights[split.index[0]] == pytest.approx(expected)
        else:
            assert table.joint_weights[split.index[0]][split.index[1]] == pytest.approx(expected)
    assert "small" not in table.input_weights[1] or allocation.replicas["small"] > 0


def test_missing_pool_url_is_named():
    allocation = allocate(problem(), IlpSettings(), "routable")
    with pytest.raises(InputError, match="no URL for pool"):
        routing_table(allocation, GRID, {})
