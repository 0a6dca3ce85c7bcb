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
