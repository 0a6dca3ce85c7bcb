"""When each service's interval pass runs: a stable phase per service, so that services created together
do not reconcile together for ever after.

Every service reads its traffic and solves again once per `reallocation.interval`. Left to themselves,
the passes of services created in one burst keep the burst's rhythm: they fall due in the same second,
queue for the cores, and each waits for the others (at 100 services a pass took 1.4 s at the median
instead of its 0.1 s of work). Instead each service owns a slot in every interval, at a phase taken from
a hash of its uid (stable across operator restarts, spread evenly over uids), on the wall clock:

    slots:  phase + m * interval   (m integer),   phase = hash(uid) / 2^64 * interval

and its interval pass runs at the first slot after its last one. The gap between two interval passes is
therefore at most one interval (plus the timer's tick and the wait for a free core); the first slot
after a pass that ran early (the service was created, or its spec changed, just before its slot) may
come sooner, never later. Pure functions; the shell (operator/handlers.py) keeps the times.
"""
from __future__ import annotations

import hashlib
import math


def phase_s(uid: str, interval_s: float) -> float:
    """The service's offset within each interval, in [0, interval): the first 8 bytes of SHA-256 of its
    uid as a fraction of 2^64 (uids are random, so the phases are spread evenly)."""
    fraction = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2 ** 64
    return fraction * interval_s


def next_slot_s(after_s: float, uid: str, interval_s: float) -> float:
    """The service's first slot strictly after `after_s` (seconds since the epoch)."""
    phase = phase_s(uid, interval_s)
    return phase + (math.floor((after_s - phase) / interval_s) + 1) * interval_s


def interval_due(now_s: float, last_fresh_s: float | None, uid: str, interval_s: float) -> bool:
    """Whether the service's interval pass is due at `now_s`: it never had one, or a slot of its own has
    come since the last (`last_fresh_s`, when that pass started)."""
    return last_fresh_s is None or now_s >= next_slot_s(last_fresh_s, uid, interval_s)
