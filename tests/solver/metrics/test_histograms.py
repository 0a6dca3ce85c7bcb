from __future__ import annotations

import math

import pytest

from melange.solver.metrics.histograms import cumulative_to_intervals, lower_edge, overlap_fraction, rebin, rebin_joint


def test_cumulative_buckets_become_intervals():
    assert cumulative_to_intervals({10: 2, 5: 1, math.inf: 4}) == [(0.0, 5, 1), (5, 10, 1), (10, math.inf, 2)]


def test_decreasing_cumulative_counts_are_clipped():
    assert cumulative_to_intervals({1: 5, 2: 3, 3: 6}) == [(0.0, 1, 5), (1, 2, 0.0), (2, 3, 1)]


def test_mass_is_spread_uniformly_over_integers():
    assert overlap_fraction(20, 50, 0, 25) == pytest.approx(5 / 30)
    assert overlap_fraction(20, 50, 25, 100) == pytest.approx(25 / 30)
    assert overlap_fraction(math.inf, math.inf, 0, 1) == 0.0


def test_rebin_keeps_mass_and_reports_beyond():
    result = rebin([(0, 20, 10), (20, 50, 30), (50, math.inf, 5)], [25, 40])
    assert result.counts == pytest.approx((10 + 5, 15))
    assert result.beyond == pytest.approx(10 + 5)
    assert sum(result.counts) + result.beyond == pytest.approx(45)


def test_joint_cells_rebin_on_both_axes():
    matrix, beyond = rebin_joint({(10.0, 10.0): 4, (20.0, 10.0): 2, (math.inf, 10.0): 1},
                                 [10, 20], [15], [10])
    assert matrix == [[5.0]] and beyond == pytest.approx(2.0)
    assert lower_edge(math.inf, [10, 20]) == 20.0


def test_marginal_rebinning_error_when_a_range_ends_mid_bucket():
    """Sizes uniform on 21..400 recorded in vLLM's (200, 500] bucket: the uniform-spread assumption
    moves mass past 250 that was not there. This is the limit of the marginal path."""
    counts = rebin([(200, 500, 200)], [250, 500]).counts
    assert counts[0] == pytest.approx(200 * 50 / 300)  # truth would be 200 * 50 / 200


def test_inf_bucket_lands_just_beyond_the_last_finite_edge_when_that_is_inside_the_grid():
    """A histogram whose last finite edge (10, or 25) lies inside the grid: its "+Inf" requests are
    the grid's (just beyond the edge), not beyond the grid. By hand: 3 in (0,10] and 2 in (10,inf)
    all fall in (0,25]; with the last edge on the grid edge 25, the 2 fall in (25,40]."""
    inside = rebin([(0, 10, 3), (10, math.inf, 2)], [25, 40])
    assert inside.counts == (5.0, 0.0) and inside.beyond == 0.0
    on_edge = rebin([(0, 25, 3), (25, math.inf, 2)], [25, 40])
    assert on_edge.counts == (3.0, 2.0) and on_edge.beyond == 0.0
    past = rebin([(0, 25, 3), (25, math.inf, 2)], [10, 25])
    assert past.counts == pytest.approx((3 * 10 / 25, 3 * 15 / 25)) and past.beyond == 2.0


def test_narrow_intervals_hold_their_integers():
    assert overlap_fraction(1, 2, 0, 25) == 1.0  # vLLM's (1, 2] holds one integer, 2
    assert overlap_fraction(5.2, 5.7, 0, 25) == 0.0  # no integer in (5.2, 5.7]
    assert overlap_fraction(0, 10, 5, 25) == 0.5


def test_empty_intervals_do_not_stop_the_rest():
    result = rebin([(0, 10, 0), (10, 20, 4), (20, 40, 0), (40, 60, 2)], [10, 20, 30, 60])
    assert result.counts == (0.0, 4.0, 0.0, 2.0) and result.beyond == 0.0


def test_joint_cells_rebin_each_axis_on_its_own_edges():
    """Input and output grids differ, so rebinning either axis on the other's edges moves counts.
    By hand, source edges 10, 20, 50: cell (10, 10) is input (0,10] output (0,10]; (20, 20) is
    (10,20] x (10,20]; (50, 10) is (20,50] x (0,10]; (10, 50) has output (20,50], of which
    (20,30] holds 10 of 30 integers and the rest lies beyond the output grid's 30."""
    cells = {(10.0, 10.0): 4, (20.0, 20.0): 2, (50.0, 10.0): 1, (10.0, 50.0): 3, (20.0, 10.0): 0}
    matrix, beyond = rebin_joint(cells, [10, 20, 50], [20, 50], [10, 30])
    assert matrix == [[4.0, 2.0 + 1.0], [1.0, 0.0]]
    assert beyond == 2.0
    matrix, beyond = rebin_joint({(20.0, 10.0): 0, (10.0, 10.0): 4, (50.0, 20.0): 2}, [10, 20, 50], [20, 50], [10, 30])
    assert matrix == [[4.0, 0.0], [0.0, 2.0]] and beyond == 0.0


def test_lower_edges():
    assert lower_edge(10, [10, 20]) == 0.0
    assert lower_edge(20, [10, 20]) == 10.0
    assert lower_edge(5, [5, 10]) == 0.0
