"""How sure a live rate is: Poisson bounds of a rate read as a count of requests over a window, and the
three workloads the decision weighs instead of the one measured.

Requests arrive one by one, so a window that counted N of them at a steady rate lambda counts
N ~ Poisson(lambda T): the rate N / T is off by about sqrt(N) / T, 9% at N = 120 (2 req/s over a
minute), 2% at N = 2400. The decision uses the same mix at three bounds of the rate:

    sized     the upper bound at `size_z`: every allocation the operator moves to is the optimum for
              it, so it serves the true rate with that confidence when it is made
    low       the lower bound at `scale_up_z`: "demand exceeds what runs" only when what runs cannot
              serve even this, so window noise is not demand growth
    high      the upper bound at `rebalance_z`: a rebalance only when the optimum for this still saves
              `minSavingsPercent`, so window noise is not a saving

A second, shorter window (`scaleUpWindow`) answers growth sooner than the window's mean can: when what
runs cannot serve even its lower bound at `surge_z` (stricter than `scale_up_z`: its count is smaller
and it is read every pass: `surge_floor`), the service scales up at once, sized for that window.

What runs was sized at the `size_z` bound of some earlier window; a later window of the same traffic
trips a move only when the two counts differ by `scale_up_z + size_z` (scale-up) or
`rebalance_z - size_z` (rebalance) standard deviations. Both gaps are counted in requests, so a short
window or a low rate (few requests) widens the bounds: it moves later, not more often. docs/operator.md
("Move only on real change") gives the measurements behind the margins.

A workload with no count (static, from the spec) or zero requests (an idle service, which falls to its
floors by rule) is exact: all three are the measured workload.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from melange.solver.workload import Workload


@dataclass(frozen=True)
class Margins:
    """The z-scores (standard deviations of the count) of the three bounds."""

    size_z: float = 2.0
    scale_up_z: float = 2.0
    rebalance_z: float = 6.0
    surge_z: float = 3.0


MARGINS = Margins()


def count_bound(requests: float, z: float) -> float:
    """The Poisson mean m at which `requests` lies exactly z standard deviations away, (N - m)^2 = z^2 m
    (the score interval): the upper bound for z > 0, the lower for z < 0, never negative. Unlike
    N +- z sqrt(N) it is right at small N (N = 0 gives [0, z^2]) and leans the way Poisson tails do."""
    return requests + z * z / 2 + z * math.sqrt(requests + z * z / 4)


def confidence(z: float) -> str:
    """The one-sided confidence of a z-score bound, to the digits that say it: 1 -> "84.1%",
    2 -> "97.7%", 3 -> "99.9%", 6 -> "99.9999999%"."""
    tail = 0.5 * math.erfc(abs(z) / math.sqrt(2))
    digits = max(1, math.floor(-math.log10(tail)) - 1)
    return f"{100 * (1 - tail):.{digits}f}".rstrip("0").rstrip(".") + "%"


@dataclass(frozen=True)
class Demand:
    """The workload measured and the same mix at the three bounds of its rate (see the module docstring);
    `requests` None: exact (all four are the same workload)."""

    measured: Workload
    sized: Workload
    low: Workload
    high: Workload
    requests: float | None = None
    margins: Margins = MARGINS

    @property
    def noisy(self) -> bool:
        """Whether the bounds differ from the measured rate."""
        return self.requests is not None and self.requests > 0

    def exact(self) -> Demand:
        """No margins: every bound at the sized workload. For a spec edit, which asks for the optimum now."""
        return Demand(self.measured, self.sized, self.sized, self.sized, None, self.margins)

    def at_least(self) -> str:
        """The scale-up bound in words: "at least 4.64 req/s (97.7% lower bound of the 5.2 req/s measured)"."""
        return (f"at least {self.low.rate:.3g} req/s ({confidence(self.margins.scale_up_z)} lower bound of the "
                f"{self.measured.rate:.3g} req/s measured)")

    def at_most(self) -> str:
        """The rebalance bound in words: "up to 8.22 req/s (99.9999999% upper bound of the 6 req/s measured)"."""
        return (f"up to {self.high.rate:.3g} req/s ({confidence(self.margins.rebalance_z)} upper bound of the "
                f"{self.measured.rate:.3g} req/s measured)")


def surge_floor(workload: Workload, requests: float | None, margins: Margins | None = None) -> Workload:
    """The scale-up window's workload at the lower bound of its rate at `surge_z`: what the traffic is
    at least, now (exact when it is no count)."""
    margins = margins or MARGINS
    if requests is None or requests <= 0 or workload.rate <= 0:
        return workload
    return workload.with_rate(workload.rate * count_bound(requests, -margins.surge_z) / requests,
                              workload.rate_source)


def bounds(workload: Workload, requests: float | None, margins: Margins | None = None) -> Demand:
    """The three bounds of `workload`, whose rate was read as `requests` requests (None: not a count),
    at `margins` (None: the module's MARGINS)."""
    margins = margins or MARGINS
    if requests is None or requests <= 0 or workload.rate <= 0:
        return Demand(workload, workload, workload, workload, None, margins)

    def at(z: float) -> Workload:
        return workload.with_rate(workload.rate * count_bound(requests, z) / requests, workload.rate_source)

    return Demand(workload, at(margins.size_z), at(-margins.scale_up_z), at(margins.rebalance_z), requests, margins)
