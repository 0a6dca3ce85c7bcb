"""The capacity-correction estimator (operator/core/corrections.py), each case computed by hand.

A profile of one input bucket and two output buckets, max rates 2 and 1 req/s per replica, SLO mean
TPOT 100 ms. A pool of 2 replicas serving 2.4 req/s split evenly runs at
u = (1.2 / 2) / 2 + (1.2 / 2) / 1 = 0.9 of the profile's capacity.
"""
from __future__ import annotations

import pytest

from melange.operator.core.corrections import (Correction, CorrectionSettings, PoolObservation, announce, decayed,
                                               overshoot, update, utilisation)
from melange.solver.profiles import Slo

MAX = ((2.0, 1.0),)
SLO = Slo(tpot_ms=100.0)
HALF = ((0.5, 0.5),)
DEFAULTS = CorrectionSettings()


def seen(tpot: float | None, *, rate: float = 2.4, requests: float = 1000, end: float = 3600.0,
         waiting: float | None = 0.0, ttft: float | None = None, replicas: float = 2.0) -> PoolObservation:
    return PoolObservation(requests, rate, HALF, replicas, tpot, ttft, waiting, end)


def test_utilisation_sums_each_buckets_share_of_its_max_rate():
    assert utilisation(3.0, HALF, 2, MAX) == pytest.approx(0.375 + 0.75)
    assert utilisation(2.4, HALF, 2, MAX) == pytest.approx(0.9)
    assert utilisation(2.4, HALF, 0, MAX) == 0.0
    # A bucket the profile cannot serve is left out.
    assert utilisation(2.0, HALF, 1, ((2.0, None),)) == pytest.approx(0.5)


def test_overshoot_takes_the_worst_target_with_data():
    both = Slo(tpot_ms=100.0, ttft_ms=1000.0)
    assert overshoot(both, 90.0, 1500.0) == pytest.approx(1.5)
    assert overshoot(both, 90.0, None) == pytest.approx(0.9)
    assert overshoot(both, None, None) is None


def test_a_miss_pulls_the_factor_down_by_the_shortfall_smoothed():
    # x = 150 / 100 = 1.5 at u = 0.9: capacity about 0.9 / sqrt(1.5) = 0.7348; one window moves half the way.
    first = update(Correction(), seen(150.0), MAX, SLO, DEFAULTS, 3600.0)
    assert first.factor == pytest.approx(1.0 + 0.5 * (0.734847 - 1.0))  # 0.867424
    assert first.samples == 1 and first.since_s == 3600.0 and "missed" in first.reason
    second = update(first, seen(150.0, end=3660.0), MAX, SLO, DEFAULTS, 3660.0)
    assert second.factor == pytest.approx(0.867424 + 0.5 * (0.734847 - 0.867424))  # 0.801135


def test_an_overlapping_window_weighs_only_its_new_part():
    # A pass a minute after the last over a 10-minute window: 1 - 0.5^(60/600) = 0.066967 of the way.
    first = update(Correction(), seen(150.0), MAX, SLO, DEFAULTS, 3600.0)
    overlapping = PoolObservation(1000, 2.4, HALF, 2.0, 150.0, None, 0.0, 3660.0, 600.0)
    second = update(first, overlapping, MAX, SLO, DEFAULTS, 3660.0)
    assert second.factor == pytest.approx(0.867424 + 0.066967 * (0.734847 - 0.867424))
    assert second.samples == 2 and second.since_s == 3600.0


def test_the_same_window_is_used_once():
    first = update(Correction(), seen(150.0), MAX, SLO, DEFAULTS, 3600.0)
    assert update(first, seen(150.0), MAX, SLO, DEFAULTS, 3630.0) == first


def test_a_waiting_queue_counts_as_a_miss():
    # Latency 90% of the SLO but 2 requests waiting per replica: read as x = 1.05, capacity 0.9 / sqrt(1.05).
    state = update(Correction(), seen(90.0, waiting=2.0), MAX, SLO, DEFAULTS, 3600.0)
    assert state.factor == pytest.approx(1.0 + 0.5 * (0.878310 - 1.0))


def test_a_miss_within_the_tolerance_is_noise():
    state = update(Correction(), seen(104.0), MAX, SLO, DEFAULTS, 3600.0)
    assert state.factor == 1.0 and "met" in state.reason


def test_a_met_window_at_high_load_only_raises_a_low_factor():
    # f = 0.6, x = 0.9 at u = 0.9: capacity at least 1.0, so the target is 1.0.
    low = Correction(0.6, 5, 0.0, "", 0.0, 0.6)
    assert update(low, seen(90.0), MAX, SLO, DEFAULTS, 3600.0).factor == pytest.approx(0.6 + 0.5 * 0.4)
    # f = 1, x = 0.95: at least 0.947, which says nothing against 1.
    assert update(Correction(), seen(95.0), MAX, SLO, DEFAULTS, 3600.0).factor == 1.0


def test_slack_moves_upward_only_when_allowed_slowly_and_to_the_bound():
    # x = 0.6 at u = 0.9: capacity at least 1.5.
    assert update(Correction(), seen(60.0), MAX, SLO, DEFAULTS, 3600.0).factor == 1.0
    allowed = CorrectionSettings(allow_upward=True, max_upward=1.2)
    state = update(Correction(), seen(60.0), MAX, SLO, allowed, 3600.0)
    assert state.factor == pytest.approx(1.0 + 0.1 * 0.2)
    for k in range(200):
        state = update(state, seen(60.0, end=3600.0 + 60 * (k + 1)), MAX, SLO, allowed, 0.0)
    assert 1.19 < state.factor <= 1.2
    # Slack not clear (x = 0.85 > 0.8, though 0.9 / 0.85 = 1.06 > 1): no move above 1 even when allowed.
    assert update(Correction(), seen(85.0), MAX, SLO, allowed, 3600.0).factor == 1.0
    # A factor above 1 when upward is (no longer) allowed is back at 1 at once.
    assert update(Correction(1.15, 9, 0.0, "", 0.0, 1.15), seen(85.0), MAX, SLO, DEFAULTS, 3600.0).factor == 1.0


def test_too_few_requests_leave_the_factor_alone():
    state = update(Correction(), seen(300.0, requests=99), MAX, SLO, DEFAULTS, 3600.0)
    assert state.factor == 1.0 and state.samples == 0 and "left alone" in state.reason


def test_low_load_and_missing_windows_decay_towards_one_with_the_half_life():
    # f = 0.8 last updated at 0; a window at u = 0.3 < 0.5 x 0.8 ending an hour later: half the distance.
    low_load = update(Correction(0.8, 3, 0.0, "", 0.0, 0.8), seen(50.0, rate=0.8), MAX, SLO, DEFAULTS, 3600.0)
    assert low_load.factor == pytest.approx(0.9)
    gone = update(Correction(0.6, 3, 0.0, "", 1000.0, 0.6), None, MAX, SLO, DEFAULTS, 1000.0 + 7200.0)
    assert gone.factor == pytest.approx(1.0 - 0.4 * 0.25)
    assert decayed(1.2, 1800.0, 1800.0) == pytest.approx(1.1)


def test_the_factor_never_falls_below_the_floor():
    # x = 10: 0.9 / sqrt(10) = 0.28 < 0.3, so the target is the floor.
    state = update(Correction(0.35, 9, 0.0, "", 0.0, 0.35), seen(1000.0), MAX, SLO, DEFAULTS, 3600.0)
    assert state.factor == pytest.approx(0.35 + 0.5 * (0.3 - 0.35))


def test_the_state_survives_status_and_events_follow_changes_over_five_percent():
    state = Correction(0.8123, 4, 1_800_000_000.0, "missed", 1_800_000_060.0, 1.0)
    back = Correction.from_status(state.to_status())
    assert (back.factor, back.samples, back.since_s, back.updated_s) == (0.8123, 4, 1_800_000_000.0, 1_800_000_060.0)
    assert Correction.from_status({"factor": "x"}) == Correction()
    moved, due = announce(Correction(factor=0.94, announced=1.0))
    assert due and moved.announced == 0.94
    assert announce(Correction(factor=0.96, announced=1.0)) == (Correction(factor=0.96, announced=1.0), False)


@pytest.mark.parametrize("field, value, message", [
    ("enabled", "yes", "spec.profileCorrection.enabled: expected true or false"),
    ("allowUpward", 1, "spec.profileCorrection.allowUpward: expected true or false"),
    ("maxUpward", 0.9, "spec.profileCorrection.maxUpward: must be >= 1"),
    ("maxUpward", 2.5, "spec.profileCorrection.maxUpward: must be <= 2"),
    ("minRequests", 0, "spec.profileCorrection.minRequests: must be >= 1"),
    ("halfLife", "soon", "spec.profileCorrection.halfLife: cannot read duration"),
    ("halfway", 1, "spec.profileCorrection.halfway: unknown field"),
])
def test_the_spec_names_a_bad_field(field, value, message):
    from melange.operator.core.spec import parse_spec
    from melange.solver.errors import InputError
    spec = {"model": "m", "catalogModel": "llama-3-8b", "slo": {"tpotMs": 120}, "gpuOptions": [{"name": "a", "gpu": "l4"}],
            "workload": {"source": "prometheus"}, "profileCorrection": {field: value}}
    with pytest.raises(InputError) as caught:
        parse_spec(spec)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_spec_defaults():
    from melange.operator.core.spec import parse_spec
    spec = {"model": "m", "catalogModel": "llama-3-8b", "slo": {"tpotMs": 120}, "gpuOptions": [{"name": "a", "gpu": "l4"}],
            "workload": {"source": "prometheus"}}
    assert parse_spec(spec).profile_correction == CorrectionSettings(True, False, 1.2, 100, 3600.0)
    spec["profileCorrection"] = {"enabled": False, "allowUpward": True, "maxUpward": 1.5, "minRequests": 50,
                                 "halfLife": "30m"}
    assert parse_spec(spec).profile_correction == CorrectionSettings(False, True, 1.5, 50, 1800.0)
