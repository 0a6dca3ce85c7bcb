"""Each service's slot in its interval: stable, spread over uids, readings half an interval to one and a
half apart.

The phase of a known uid is checked against SHA-256 computed outside Python (`printf svc-uid-0001 |
sha256sum`: 4468877a9a735745..., 0x4468877a9a735745 / 2^64 x 60 s = 16.0332 s)."""
from __future__ import annotations

import random
import uuid

import pytest

from melange.operator.core.schedule import interval_due, next_interval_pass_s, phase_s

NOW = 1_790_000_000.0


def test_the_phase_of_a_uid_is_its_hash_as_a_fraction_of_the_interval():
    assert phase_s("svc-uid-0001", 60.0) == pytest.approx(16.03319935412131, abs=1e-9)
    assert phase_s("svc-uid-0001", 30.0) == pytest.approx(16.03319935412131 / 2, abs=1e-9)


def test_the_phase_is_stable_and_other_uids_get_other_phases():
    assert phase_s("svc-uid-0001", 60.0) == phase_s("svc-uid-0001", 60.0)
    assert phase_s("svc-uid-0002", 60.0) != phase_s("svc-uid-0001", 60.0)


def test_phases_spread_evenly_over_the_interval():
    # 1,000 uids as Kubernetes makes them (random UUIDs; seeded here): each tenth of the interval gets
    # 100 +- 30 (three standard deviations of a binomial count, sqrt(1000 x 0.1 x 0.9) = 9.5).
    rng = random.Random(7)
    phases = [phase_s(str(uuid.UUID(int=rng.getrandbits(128), version=4)), 60.0) for _ in range(1000)]
    assert all(0 <= p < 60 for p in phases)
    counts = [sum(6 * k <= p < 6 * (k + 1) for p in phases) for k in range(10)]
    assert all(70 <= c <= 130 for c in counts), counts
    # and a burst of uids created together is not due together: no second holds more than 5 of them
    # (1,000 over 60 s: about 17 per second; not one second with more than 40)
    per_second = [sum(s <= p < s + 1 for p in phases) for s in range(60)]
    assert max(per_second) <= 40, max(per_second)


def test_due_at_first_then_half_an_interval_and_half_the_phase_after_then_one_interval_after_the_last():
    uid, interval = "svc-uid-0001", 60.0
    assert interval_due(NOW, None, False, uid, interval)  # never read its traffic
    # the create pass read the traffic off the rhythm: the next comes 30 + 16.0332 / 2 = 38.0166 s later
    created = NOW + 10
    due = NOW + 10 + 30 + 16.03319935412131 / 2
    assert next_interval_pass_s(created, False, uid, interval) == pytest.approx(due, abs=1e-6)
    assert not interval_due(due - 0.001, created, False, uid, interval)
    assert interval_due(due + 0.001, created, False, uid, interval)
    # that pass started 0.7 s late (the tick, a wait for a core): the next is an interval after it
    started = due + 0.7
    assert next_interval_pass_s(started, True, uid, interval) == started + interval
    assert not interval_due(started + interval - 0.001, started, True, uid, interval)
    assert interval_due(started + interval, started, True, uid, interval)


def test_services_created_together_are_spread_over_half_an_interval():
    # 200 services created in the same second (seeded uuids): their first interval passes fall due half
    # an interval plus half their phase later, so no 1 s of those 30 s holds more than 20 of them
    # (200 / 30 = 6.7 per second on average).
    rng = random.Random(11)
    uids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(200)]
    due = [next_interval_pass_s(NOW, False, uid, 60.0) for uid in uids]
    assert all(NOW + 30.0 <= d < NOW + 60.0 for d in due)
    per_second = [sum(s <= (d - NOW - 30.0) < s + 1 for d in due) for s in range(30)]
    assert max(per_second) <= 20, max(per_second)
    assert min(per_second) >= 1, min(per_second)


def test_passes_driven_by_a_one_second_tick_are_half_to_one_interval_apart():
    """A tick every second from a random start, passes taking up to 0.3 s, a few passes started by other
    causes (spec edits, which read the traffic too) in between: an interval pass comes at least half an
    interval after the reading before it, and within one interval + tick + pass."""
    rng = random.Random(3)
    for service in range(50):
        uid, interval = f"uid-{service}", rng.choice([5.0, 30.0, 60.0, 300.0])
        now, last, on_phase, starts, interval_gaps = NOW + rng.random(), None, False, [], []
        while now < NOW + 20 * interval:
            if rng.random() < 0.01:
                starts.append(now)  # an edit: a pass with a fresh reading now, off the phase
                last, on_phase = now, False
            elif interval_due(now, last, on_phase, uid, interval):
                if last is not None:
                    interval_gaps.append(now - last)
                starts.append(now)
                last, on_phase = now, last is not None
                now += rng.uniform(0.01, 0.3)
            now = now + 1.0 - (now - NOW) % 1.0 if rng.random() < 0.5 else now + 1.0
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert gaps and max(gaps) <= interval + 1.0 + 0.3, (uid, interval, max(gaps))
        assert interval_gaps and min(interval_gaps) >= interval / 2, (uid, interval, min(interval_gaps))
