"""The counts the steady-traffic passes read: the window's, and the scale-up window's within it."""
from __future__ import annotations

import numpy as np

from melange.testing.reconcile_passes import window_counts


def test_the_scale_up_window_counts_part_of_the_window_at_its_share_of_the_rate():
    rates = [5.0] * 400
    plain = window_counts(rates, 60.0, 600.0, seed=3)
    counted = window_counts(rates, 60.0, 600.0, seed=3, recent_s=120.0)
    assert [c for c, _ in counted] == [c for c, _ in plain]  # the window's counts are the seed's either way
    assert all(r is None for _, r in plain)
    # 2 whole intervals: at most the window; the mean near 5 req/s x 120 s = 600 (sd sqrt(600)/sqrt(400) = 1.2)
    recent = np.array([r for _, r in counted])
    assert all(r <= c for c, r in counted) and abs(recent.mean() - 600) < 5
    # 30 s: half of the last interval, by thinning; a mean near 150 (sd sqrt(150 / 400) = 0.6)
    half = np.array([r for _, r in window_counts(rates, 60.0, 600.0, seed=3, recent_s=30.0)])
    assert abs(half.mean() - 150) < 3 and half.var() > 100  # Poisson: the variance is the mean, 150


def test_a_step_shows_in_the_scale_up_window_first():
    # 1 req/s for 20 intervals, then 10 req/s: one interval after the step, the last 60 s hold the new
    # rate only (600 +- 25) while the 10-minute window holds one tenth of it (60 + 9 x 60 = 1140)
    counted = window_counts([1.0] * 20 + [10.0] * 5, 60.0, 600.0, seed=5, recent_s=60.0)
    window, recent = counted[20]
    assert 500 < recent < 700 and 1000 < window < 1300
