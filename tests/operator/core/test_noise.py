"""Poisson bounds of a counted rate, against hand-worked numbers and the exact Poisson distribution
summed term by term here."""
from __future__ import annotations

import math

import pytest

from melange.operator.core.noise import MARGINS, Margins, bounds, confidence, count_bound
from melange.solver.buckets import BucketGrid
from melange.solver.workload import make_workload

MIX = make_workload(6.0, BucketGrid((100, 1000), (100,)), [[0.75], [0.25]], "w")


def poisson_cdf(n: int, mean: float) -> float:
    """P(X <= n) for X ~ Poisson(mean), summed term by term in logs."""
    return sum(math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1)) for k in range(n + 1))


def normal_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_bounds_by_hand():
    # N = 0: [0, z^2]; N = 4, z = 1: 4.5 +- sqrt(4.25); N = 100, z = 3: 104.5 +- 3 sqrt(102.25)
    assert count_bound(0, 1) == 1.0 and count_bound(0, -1) == 0.0 and count_bound(0, 3) == 9.0
    assert count_bound(4, 1) == pytest.approx(6.561553, abs=1e-6)
    assert count_bound(4, -1) == pytest.approx(2.438447, abs=1e-6)
    assert count_bound(100, 3) == pytest.approx(134.835623, abs=1e-6)
    assert count_bound(100, -3) == pytest.approx(74.164377, abs=1e-6)
    assert count_bound(4, -3) == pytest.approx(1.0)  # 8.5 - 3 sqrt(6.25)


@pytest.mark.parametrize("requests", [0, 1, 7, 120, 3600])
@pytest.mark.parametrize("z", [1.0, 3.0, 5.0])
def test_a_bound_lies_z_standard_deviations_from_the_count(requests, z):
    """The definition: (N - m)^2 = z^2 m, m the mean (and the variance) of the Poisson count."""
    for m in (count_bound(requests, z), count_bound(requests, -z)):
        assert (requests - m) ** 2 == pytest.approx(z * z * m, abs=1e-9)
    assert count_bound(requests, -z) <= requests <= count_bound(requests, z)


@pytest.mark.parametrize("requests", [100, 360, 1000])
@pytest.mark.parametrize("z", [1.0, 3.0])
def test_the_exact_poisson_tails_at_the_bounds_are_near_the_normal_ones(requests, z):
    """At the upper bound m, a count as low as N is about as unlikely as z standard deviations of a
    normal; at the lower bound a count as high. The score interval is not exact: within a factor 2
    from 100 requests on (the operator asks for 200 by default, minRequests)."""
    upper, lower = count_bound(requests, z), count_bound(requests, -z)
    assert 0.5 < poisson_cdf(requests, upper) / normal_tail(z) < 2
    assert 0.5 < (1 - poisson_cdf(requests - 1, lower)) / normal_tail(z) < 2


def test_fewer_requests_give_relatively_wider_bounds():
    widths = [count_bound(n, 3) / n - 1 for n in (60, 360, 3600)]
    assert widths == sorted(widths, reverse=True)
    assert widths[0] > 0.4 and widths[-1] < 0.06


def test_confidence_in_words():
    assert [confidence(z) for z in (1, 2, 3, 5, 6)] == ["84.1%", "97.7%", "99.9%", "99.99997%", "99.9999999%"]


def test_the_bounds_scale_the_rate_and_keep_the_mix():
    demand = bounds(MIX, 360)  # 6 req/s counted over 60 s; the default margins 2, 2 and 6
    assert demand.margins == MARGINS == Margins(size_z=2.0, scale_up_z=2.0, rebalance_z=6.0)
    assert demand.noisy and demand.measured is MIX
    assert demand.sized.rate == pytest.approx(6.0 * count_bound(360, 2) / 360)
    assert demand.low.rate == pytest.approx(6.0 * count_bound(360, -2) / 360)
    assert demand.high.rate == pytest.approx(6.0 * count_bound(360, 6) / 360)
    assert demand.low.rate < MIX.rate < demand.sized.rate < demand.high.rate
    assert {w.distribution for w in (demand.sized, demand.low, demand.high)} == {MIX.distribution}
    # 360 + 2 -+ 2 sqrt(361) = 324 and 400 requests; 360 + 18 + 6 sqrt(369) = 493.26
    assert demand.at_least() == "at least 5.4 req/s (97.7% lower bound of the 6 req/s measured)"
    assert (demand.sized.rate, demand.high.rate) == pytest.approx((400 / 60, 493.256 / 60))
    assert demand.at_most() == "up to 8.22 req/s (99.9999999% upper bound of the 6 req/s measured)"
    other = bounds(MIX, 360, Margins(size_z=1.0, scale_up_z=3.0, rebalance_z=5.0))
    assert other.sized.rate == pytest.approx(6.0 * count_bound(360, 1) / 360)
    assert other.at_least() == "at least 5.12 req/s (99.9% lower bound of the 6 req/s measured)"


def test_no_count_or_no_requests_is_exact():
    for demand in (bounds(MIX, None), bounds(MIX.with_rate(0.0), 0.0)):
        assert not demand.noisy
        assert demand.sized is demand.low is demand.high is demand.measured


def test_exact_drops_the_margins_at_the_sized_workload():
    demand = bounds(MIX, 360).exact()
    assert not demand.noisy and demand.low is demand.high is demand.sized
    assert demand.sized.rate > MIX.rate
