"""Make-before-break: a move from one allocation to another as a small state machine kept in status,
so a restarted operator resumes it where it stood.

    scaling-up    every pool at max(old, new) replicas; routing still follows the old split;
                  waits until every pool has that many ready replicas
    switching     the routing table follows the new split (written this step); waits until every
                  ready router pod acknowledges serving it
    draining      waits until every ready router pod reports no request in flight to the pools the
                  move removes (`drain_waits`), at most the drain bound (the removed pools' termination
                  grace) from the acknowledgement
    scaling-down  every pool at its new replicas; pools the new mix drops go to zero, then away
    (done)        status.allocation is the new mix

At every step the ready replicas carry the split the router applies: the old split on old pools
that are never reduced before the switch, the new split on pools that are ready before it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melange.operator.core.status import from_iso, iso

STEPS = ("scaling-up", "switching", "draining", "scaling-down")
# The longest a drain waits, counted from every router serving the new table; None: the removed pools'
# termination grace (their Deployments' terminationGracePeriodSeconds), the time a pod of theirs is
# given anyway to finish its requests when it is told to stop.
DEFAULT_DRAIN_S: float | None = None
FALLBACK_GRACE_S = 30.0  # Kubernetes' default terminationGracePeriodSeconds


@dataclass(frozen=True)
class Move:
    """A move in progress: from `source` to `target` (option -> replicas), at `step` since `since_s`,
    begun at `started_s` (seconds since the epoch; wall time in status)."""

    source: Mapping[str, int]
    target: Mapping[str, int]
    step: str
    since_s: float
    reason: str = ""
    started_s: float | None = None

    @property
    def began_s(self) -> float:
        """When the move began (a record without `started` began at its step's start)."""
        return self.since_s if self.started_s is None else self.started_s

    def to_status(self) -> dict[str, Any]:
        return {"from": dict(self.source), "to": dict(self.target), "step": self.step, "since": iso(self.since_s),
                "started": iso(self.began_s), "reason": self.reason}

    def at(self, step: str, since_s: float) -> Move:
        """The same move at another step."""
        return Move(self.source, self.target, step, since_s, self.reason, self.began_s)

    @staticmethod
    def from_status(data: Any) -> Move | None:
        """The move recorded in status, or None (also for a malformed record: then no move is resumed)."""
        if not isinstance(data, Mapping) or data.get("step") not in STEPS:
            return None
        since = from_iso(data.get("since"))
        try:
            return Move({k: int(v) for k, v in data["from"].items()}, {k: int(v) for k, v in data["to"].items()},
                        data["step"], since, str(data.get("reason", "")),
                        from_iso(data.get("started"))) if since is not None else None
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True)
class Stage:
    """What one step asks of the cluster: replicas per pool, and which allocation the routing follows."""

    replicas: dict[str, int]
    routing: str  # "source" or "target"


def peak(move: Move) -> dict[str, int]:
    """max(source, target) per option: both mixes at once."""
    names = set(move.source) | set(move.target)
    return {name: max(move.source.get(name, 0), move.target.get(name, 0)) for name in sorted(names)}


def stage(move: Move) -> Stage:
    """The replicas and routing of a move's current step."""
    if move.step == "scaling-up":
        return Stage(peak(move), "source")
    if move.step in ("switching", "draining"):
        return Stage(peak(move), "target")
    return Stage({name: count for name, count in move.target.items()}, "target")


def all_ready(wanted: Mapping[str, int], ready: Mapping[str, int]) -> bool:
    """Every pool has at least the replicas wanted, ready."""
    return all(ready.get(name, 0) >= count for name, count in wanted.items() if count > 0)


def removed(move: Move) -> tuple[str, ...]:
    """The pools the move takes away (running before, none after): the new table no longer routes to
    them, and they go to zero once drained. A pool that only shrinks stays in the table; its pods that
    go stop gracefully (not ready at once, so no new request, then their termination grace)."""
    return tuple(sorted(name for name, count in move.source.items() if count > 0 and move.target.get(name, 0) <= 0))


@dataclass(frozen=True)
class Drain:
    """What a drain observed: per ready router pod, its requests in flight to each pool, as it last
    reported them for the new table (None for a pod that reported nothing for it: an older router, or
    one that stopped writing); `in_flight` None: routers are not followed (then the drain takes its
    bound). `bound_s`: the longest the drain waits, from its start."""

    in_flight: Mapping[str, Mapping[str, int] | None] | None
    bound_s: float


def drain_waits(move: Move, drain: Drain, now_s: float) -> str | None:
    """What a draining move still waits for, in a line; None when the drain is over: every ready router
    reports zero requests in flight to the pools the move removes, or `bound_s` has passed since the
    drain began, whichever comes first (a silent router, or a request longer than the pools' grace,
    holds the move no longer than the pods would be given to stop anyway)."""
    left = drain.bound_s - (now_s - move.since_s)
    if left <= 0:
        return None
    bound = f"at most {left:.0f} s more, the pools' termination grace"
    if drain.in_flight is None:
        return f"waiting for requests in flight on the old split ({bound})"
    pools = removed(move)
    if not pools:
        return None
    busy = []
    for pod, counts in sorted(drain.in_flight.items()):
        if counts is None:
            busy.append(f"{pod} reports none")
            continue
        held = [f"{counts[pool]} to {pool}" for pool in pools if counts.get(pool, 0) > 0]
        if held:
            busy.append(f"{pod} has {', '.join(held)}")
    if not busy:
        return None
    return f"waiting for requests in flight to {', '.join(pools)}: {'; '.join(busy)} ({bound})"


def advance(move: Move, ready: Mapping[str, int], now_s: float, drain: Drain | None = None,
            switched: bool = True) -> Move | None:
    """The move after this pass's observations; None when it is complete. `ready`: ready replicas per
    pool now; `switched`: every router serves the new table; `drain`: what the drain waits on (None:
    nothing is followed and there is no bound, the drain ends at once). The caller then applies
    `stage()` of the returned move."""
    if move.step == "scaling-up":
        return move.at("switching", now_s) if all_ready(peak(move), ready) else move
    if move.step == "switching":  # the drain counts from the acknowledgement
        return move.at("draining", now_s) if switched else move
    if move.step == "draining":
        return move.at("scaling-down", now_s) if drain is None or drain_waits(move, drain, now_s) is None else move
    shrunk = all(ready.get(name, 0) <= move.target.get(name, 0) for name in peak(move))
    return None if shrunk else move


SWITCH_POLL_S = 2.0  # how often a switch (and a drain) looks for the routers' acknowledgements (reports)


def next_wake_s(move: Move, drain: Drain | None, timeout_s: float, now_s: float | None = None) -> float:
    """When the move needs a pass that no change of its pools announces: the switch looks for the routers'
    acknowledgements at once and then every SWITCH_POLL_S; the drain looks for the routers' requests in
    flight the same way, and ends at its bound at the latest; a scale-up that never becomes ready ends at
    its deadline."""
    if move.step == "switching":
        return move.since_s if now_s is None or now_s <= move.since_s else now_s + SWITCH_POLL_S
    if move.step == "draining":
        end = move.since_s + (drain.bound_s if drain is not None else 0.0)
        if drain is None or drain.in_flight is None or now_s is None:
            return end
        return move.since_s if now_s <= move.since_s else min(end, now_s + SWITCH_POLL_S)
    return move.began_s + timeout_s
