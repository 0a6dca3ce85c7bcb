from __future__ import annotations

import pytest

from melange.operator.router.routing_config import table_from_dict
from melange.solver.errors import InputError
from melange.solver.ilp import IlpSettings
from melange.solver.routing import routing_table
from melange.solver.solve import allocate

from .small_problem import GRID, problem

@pytest.mark.parametrize("mode", ["paper", "routable"])
def test_table_from_allocation_is_valid_and_matches_splits(mode):
    allocation = allocate(problem(rate=6.0), IlpSettings(), mode)
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
    allocation = allocate(problem(rate=6.0), IlpSettings(), "routable")
    with pytest.raises(InputError, match="no URL for pool"):
        routing_table(allocation, GRID, {})
