from __future__ import annotations

import pytest

from melange.solver.buckets import BucketGrid, check_same_grid, grid_from_dict, indexed_grid, paper_grid
from melange.solver.errors import InputError


def test_bucket_lookup_uses_upper_edges_inclusive():
    grid = BucketGrid((25, 100), (10,))
    assert grid.input_bucket(0) == 0
    assert grid.input_bucket(25) == 0
    assert grid.input_bucket(26) == 1
    assert grid.input_bucket(100) == 1
    assert grid.input_bucket(101) is None
    assert grid.output_bucket(11) is None


def test_labels_name_token_ranges():
    grid = paper_grid()
    assert grid.shape == (10, 6)
    assert grid.label(1, 0) == "in(25,100] out(0,25]"
    assert indexed_grid(2, 2).label(1, 0) == "in#1 out#0"


def test_round_trip():
    grid = BucketGrid((10, 20), (5,))
    assert grid_from_dict(grid.to_dict(), "g") == grid


@pytest.mark.parametrize("data,where", [
    ({"input_edges": [10, 10], "output_edges": [5]}, "g.input_edges[1]"),
    ({"input_edges": [0, 10], "output_edges": [5]}, "g.input_edges[0]"),
    ({"input_edges": [], "output_edges": [5]}, "g.input_edges"),
    ({"input_edges": [10]}, "g"),
    ({"input_edges": [10], "output_edges": [5], "extra": 1}, "g.extra"),
    ({"input_edges": "10", "output_edges": [5]}, "g.input_edges"),
])
def test_bad_grids_name_the_field(data, where):
    with pytest.raises(InputError) as error:
        grid_from_dict(data, "g")
    assert str(error.value).startswith(where)


def test_mismatched_grids_are_rejected():
    with pytest.raises(InputError, match="does not match"):
        check_same_grid(BucketGrid((10,), (5,)), BucketGrid((20,), (5,)), "profile L4")
