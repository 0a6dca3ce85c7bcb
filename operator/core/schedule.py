"""When each service's interval pass runs: a stable phase per service, so that services created together
do not reconcile together for ever after, and no service goes longer than an interval without a reading.

Every service reads its traffic and solves again once per `reallocation.interval`. Left to themselves,
the passes of services created in one burst keep the burst's rhythm: they fall due in the same second,
queue for the cores, and each waits for the others (at 100 services a pass took 1.4 s at the median
instead of its 0.1 s of work). Instead each service has a phase, a hash of its uid as a fraction of
the interval (stable across operator restarts, spread evenly over uids):

    phase = hash(uid) / 2^64 * interval,   in [0, interval)

A pass that read the traffic off the interval rhythm (the create pass, a resume after an operator
restart, an edit) is followed by the next interval pass half an interval plus half the phase later,
so between half an interval and one interval after it; from there on, one interval after the start of
the last. So two readings of the traffic are never less than half an interval apart (one a second
after the other reads nearly the same window: a thin, noisy reading of a new service's first
requests, and a pass for nothing) nor more than one interval (plus the timer's tick and the wait for a
free core); a burst of creations is spread evenly over half an interval, and the passes of one service
then keep that spacing, drifting by the tick like every timer rather than being locked to the wall
clock. Pure functions; the shell (operator/handlers.py) keeps the times.
"""
from __future__ import annotations

import hashlib


def phase_s(uid: str, interval_s: float) -> float:
    """The service's phase, in [0, interval): the first 8 bytes of SHA-256 of its uid as a fraction of
    2^64 (uids are random, so the phases are spread evenly)."""
    fraction = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2 ** 64
    return fraction * interval_s


def next_interval_pass_s(last_fresh_s: float, on_phase: bool, uid: str, interval_s: float) -> float:
    """When the service's next interval pass falls due (seconds since the epoch), after a pass that read
    fresh traffic and started at `last_fresh_s`: one interval later when that pass was itself an
    interval pass (`on_phase`), else half an interval plus half its phase later."""
    if on_phase:
        return last_fresh_s + interval_s
    return last_fresh_s + interval_s / 2 + phase_s(uid, interval_s) / 2


def interval_due(now_s: float, last_fresh_s: float | None, on_phase: bool, uid: str, interval_s: float) -> bool:
    """Whether the service's interval pass is due at `now_s`: it never read traffic, or its next interval
    pass (`next_interval_pass_s`) has come."""
    return last_fresh_s is None or now_s >= next_interval_pass_s(last_fresh_s, on_phase, uid, interval_s)
