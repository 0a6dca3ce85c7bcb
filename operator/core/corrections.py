"""Profiles that correct themselves: each option's capacity factor, learned from what its pool serves.

A profile says, per bucket b, the highest rate `max[b]` one replica sustains within the SLO. A pool
may sustain less (a slower node, another vLLM version or flags, an estimated profile that errs) or
more. The operator keeps, per option (GPU type and GPUs per replica, i.e. the option's name), a
factor `f` and plans with `f * max[b]` (operator/core/problem.py `build_problem`); the solver and the
decision rules are unchanged. This module is the estimator: pure, deterministic, its state a small
frozen dataclass kept in `status.profileCorrections` (so it survives restarts).

**What one window says.** The pool served rate `r[b]` per bucket on `n` ready replicas. Its
utilisation against the uncorrected profile is

    u = sum_b (r[b] / n) / max[b]

(u = 1: the load the profile says one replica sustains at the SLO). Its latency statistic (the SLO's
mean or percentile of TPOT and/or TTFT) over the SLO target is the overshoot `x` (the largest over
the SLO's targets; x <= 1 meets the SLO). Suppose the true capacity is `c` times the profile and
latency grows with load so that it reaches the SLO exactly at u = c (the profile's own definition of
capacity). Below capacity a vLLM step costs a fixed part plus a part that grows with the batch, and
the batch grows with the load, so latency ~ SLO * (a + (1 - a) u / c) with 0 <= a < 1 the share of
an idle replica's latency. Taking latency proportional to load (a = 0) gives the estimate

    c_hat = u / x.

When the SLO is met (u <= c), a + (1 - a) u/c >= u/c, so x >= u/c and c_hat <= c: a *lower bound*,
sharp near capacity and useless at low load (c_hat -> 0 as u -> 0). When the SLO is missed at load
u, the capacity is below u (u > c), and x says by how much (latency far over the SLO means far over
capacity). But beyond capacity requests queue, and latency grows faster than load: u / x then errs
low (in the replay bench it drove factors to 0.3 for a true 0.7 and bought 13% more than needed).
So a miss takes the geometric middle between the sure bound u and u / x,

    c_miss = u / x^`MISS_EXPONENT` (0.5),

which stays below u, and repeats: if the pool still misses at its new size, the next windows lower
it again. Hence the rule:

- **miss** (x > 1 + `MISS_TOLERANCE`, or a waiting queue of at least `QUEUE_PER_REPLICA` requests per
  replica on average, read as x = max(x, 1 + tolerance)): the target is min(f, c_miss), at least
  `FLOOR`; the factor only falls.
- **met at high load** (u >= `HIGH_LOAD` x f: the pool ran at least half of its corrected capacity):
  c_hat is a lower bound, so the target is max(f, min(c_hat, 1)): the factor only rises, back towards
  the profile; above 1 only with `allowUpward`, only with clear slack (x <= 1 - `UPWARD_SLACK`),
  at the slower gain `UPWARD_GAIN` and at most `maxUpward`.
- **no evidence** (met at low load, fewer than `minRequests` requests, no latency series, or no
  window for the pool: it does not run): the factor decays towards 1 with half-life `halfLife`,
  f <- 1 + (f - 1) 2^(-dt / halfLife), dt the time since the state was last updated.

Each move towards a target is smoothed, f <- f + w (target - f) (an exponentially weighted moving
average), and clamped to [`FLOOR`, maxUpward or 1]. The weight is `GAIN` (0.5) for a whole window of
new data; a pass every minute over a 10-minute window brings a tenth of a window of news, weighted
1 - (1 - GAIN)^(1/10), so the same minutes are not counted ten times. A window is used once (the
state keeps the end of the last window used), so passes that reuse the last reading change nothing.
The fixed point under a latency model with idle share a and the operator's target utilisation t
(it sizes each pool at u = t f): met windows settle at f = c (t - a) / ((1 - a) t), e.g. 0.96 c at
a = 0.2, t = 0.85: the rule errs towards more GPUs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from melange.operator.core.status import from_iso, iso
from melange.solver.profiles import Slo

FLOOR = 0.3  # a pool read at under 30% of its profile is broken, not mis-profiled: do not chase it lower
GAIN = 0.5  # weight of one window in the moving average
UPWARD_GAIN = 0.1  # above the profile, move slowly
MISS_EXPONENT = 0.5  # on a miss, capacity about u / x^0.5 (queueing makes x overstate the overload)
MISS_TOLERANCE = 0.05  # a latency statistic within 5% over the SLO is noise, not a miss
UPWARD_SLACK = 0.2  # "clear slack": latency at most 80% of the SLO
HIGH_LOAD = 0.5  # a window at under half the corrected capacity says nothing of the capacity
QUEUE_PER_REPLICA = 1.0  # requests waiting per replica on average: the pool is saturated
EVENT_CHANGE = 0.05  # an Event when the factor moved more than 5% since the last one


@dataclass(frozen=True)
class CorrectionSettings:
    """`spec.profileCorrection`. Defaults: on (a correction acts only on live per-pool latency),
    downward only, 1.2 at most when upward is allowed, 100 requests per window, half-life 1 h."""

    enabled: bool = True
    allow_upward: bool = False
    max_upward: float = 1.2
    min_requests: int = 100
    half_life_s: float = 3600.0

    @property
    def ceiling(self) -> float:
        return self.max_upward if self.allow_upward else 1.0


@dataclass(frozen=True)
class PoolObservation:
    """One pool over one window: requests it finished, its rate (req/s) and size mix on the service's
    grid, its ready replicas (mean over the window where known), its latency at the SLO's statistic (ms; None: no series), requests
    waiting per replica (mean over the window; None: not read), and when the window ended."""

    requests: float
    rate: float
    distribution: tuple[tuple[float, ...], ...]
    replicas: float | None  # None: the operator counts the pool's ready replicas
    tpot_ms: float | None
    ttft_ms: float | None
    waiting_per_replica: float | None
    end_s: float
    window_s: float | None = None  # the window's length (None: windows do not overlap)


@dataclass(frozen=True)
class Correction:
    """One option's state: its factor, the windows that informed it, when it last left 1.0 (None at
    1.0), why it is what it is, the end of the last window used (or the last decay), and the factor
    the last Event announced."""

    factor: float = 1.0
    samples: int = 0
    since_s: float | None = None
    reason: str = "no evidence yet"
    updated_s: float | None = None
    announced: float = 1.0

    def to_status(self) -> dict[str, Any]:
        return {"factor": round(self.factor, 4), "samples": self.samples,
                "since": None if self.since_s is None else iso(self.since_s), "reason": self.reason,
                "updated": None if self.updated_s is None else iso(self.updated_s),
                "announced": round(self.announced, 4)}

    @staticmethod
    def from_status(data: Any) -> Correction:
        """The state from `status.profileCorrections[option]`; a fresh one when absent or unreadable."""
        if not isinstance(data, Mapping):
            return Correction()
        try:
            factor = float(data.get("factor", 1.0))
            announced = float(data.get("announced", factor))
            samples = int(data.get("samples", 0))
        except (TypeError, ValueError):
            return Correction()
        if not (math.isfinite(factor) and factor > 0 and math.isfinite(announced)):
            return Correction()
        return Correction(factor, samples, from_iso(data.get("since")), str(data.get("reason", "")),
                          from_iso(data.get("updated")), announced)


def utilisation(rate: float, distribution: Sequence[Sequence[float]], replicas: float,
                max_rps: Sequence[Sequence[float | None]]) -> float:
    """u = sum_b (rate x share[b] / replicas) / max[b]: the pool's load per replica as a fraction of
    what the profile says one replica sustains. Buckets the profile cannot serve are left out (the
    solver routes none there)."""
    if replicas <= 0 or rate <= 0:
        return 0.0
    total = 0.0
    for shares, limits in zip(distribution, max_rps):
        for share, limit in zip(shares, limits):
            if share > 0 and limit:
                total += rate * share / replicas / limit
    return total


def overshoot(slo: Slo, tpot_ms: float | None, ttft_ms: float | None) -> float | None:
    """The latency statistic over the SLO, the largest over the SLO's targets with data (1 = at the
    SLO); None when no target has data."""
    ratios = [value / target for value, target in ((tpot_ms, slo.tpot_ms), (ttft_ms, slo.ttft_ms))
              if value is not None and target]
    return max(ratios) if ratios else None


def decayed(factor: float, elapsed_s: float, half_life_s: float) -> float:
    """The factor after `elapsed_s` without evidence: its distance to 1 halves every `half_life_s`."""
    if elapsed_s <= 0:
        return factor
    return 1.0 + (factor - 1.0) * 0.5 ** (elapsed_s / half_life_s)


def _decay(state: Correction, now_s: float, settings: CorrectionSettings, why: str) -> Correction:
    elapsed = 0.0 if state.updated_s is None else now_s - state.updated_s
    factor = decayed(state.factor, elapsed, settings.half_life_s)
    factor = max(FLOOR, min(factor, settings.ceiling))  # (upward switched off: back to 1 at once)
    if abs(factor - 1.0) < 1e-4:
        factor = 1.0
    reason = why if factor == 1.0 else f"{why}; decaying towards 1 (half-life {settings.half_life_s / 60:g}m)"
    return replace(state, factor=factor, reason=reason, updated_s=now_s,
                   since_s=None if factor == 1.0 else state.since_s)


def _weight(gain: float, state: Correction, observation: PoolObservation) -> float:
    """The weight of this window's news: `gain` for a whole window of new data; windows that overlap the
    last one used (a pass every minute over a 10-minute window) carry only their new part, so that
    the same minutes are not counted ten times: 1 - (1 - gain)^(new / window)."""
    if observation.window_s is None or state.updated_s is None:
        return gain
    new = min(1.0, max(0.0, (observation.end_s - state.updated_s) / observation.window_s))
    return 1.0 - (1.0 - gain) ** new


def update(state: Correction, observation: PoolObservation | None, max_rps: Sequence[Sequence[float | None]],
           slo: Slo, settings: CorrectionSettings, now_s: float) -> Correction:
    """The option's next state after `observation` (None: no window for the pool); see the module
    docstring for the rule. A window whose end is not after the last one used changes nothing."""
    if observation is None:
        return _decay(state, math.floor(now_s), settings, "no window for this pool (not running)")
    end = float(math.floor(observation.end_s))  # (status keeps whole seconds)
    if state.updated_s is not None and end <= state.updated_s:
        return state
    if observation.requests < settings.min_requests:
        return _decay(state, end, settings, f"left alone: {observation.requests:.0f} requests in the window "
                                            f"(< minRequests {settings.min_requests})")
    x = overshoot(slo, observation.tpot_ms, observation.ttft_ms)
    if x is None:
        return _decay(state, end, settings, "left alone: no latency series for the pool")
    u = utilisation(observation.rate, observation.distribution, observation.replicas or 0.0, max_rps)
    queued = (observation.waiting_per_replica or 0.0) >= QUEUE_PER_REPLICA
    f = state.factor
    latency = f"{100 * x:.0f}% of the SLO at {100 * u:.0f}% of the profile's capacity"
    if x > 1.0 + MISS_TOLERANCE or queued:
        x = max(x, 1.0 + MISS_TOLERANCE)
        estimate = u / x ** MISS_EXPONENT
        target = max(FLOOR, min(f, estimate))
        new = f + _weight(GAIN, state, observation) * (target - f)
        why = (f"missed the SLO: {latency}" + (f", {observation.waiting_per_replica:.1f} waiting per replica"
                                                if queued else "") + f": capacity about {estimate:.2f} of the profile")
    elif u >= HIGH_LOAD * f:
        estimate = u / x
        upper = settings.max_upward if settings.allow_upward and x <= 1.0 - UPWARD_SLACK else 1.0
        target = max(f, min(estimate, upper))
        gain = _weight(UPWARD_GAIN if target > 1.0 and f >= 1.0 else GAIN, state, observation)
        new = f + gain * (target - f)
        why = f"met the SLO: {latency}: capacity at least {estimate:.2f} of the profile"
    else:
        return _decay(state, end, settings, f"left alone: load too low to judge ({latency})")
    new = min(max(new, FLOOR), max(settings.ceiling, 1.0))
    if abs(new - 1.0) < 1e-4:
        new = 1.0
    since = None if new == 1.0 else (state.since_s if state.since_s is not None and (state.factor < 1) == (new < 1)
                                     else end)
    return Correction(new, state.samples + 1, since, why, end, state.announced)


def announce(state: Correction) -> tuple[Correction, bool]:
    """Whether the factor moved more than `EVENT_CHANGE` since the last announced one (then an Event is
    due and the state remembers the new factor)."""
    if abs(state.factor - state.announced) > EVENT_CHANGE * state.announced:
        return replace(state, announced=state.factor), True
    return state, False


def factors(states: Mapping[str, Correction]) -> dict[str, float]:
    """The factors to plan with, by option (those at 1 left out)."""
    return {name: s.factor for name, s in states.items() if s.factor != 1.0}
