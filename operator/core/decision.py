"""Whether to move from the current allocation to a new optimum: pure functions, no clock, no API.

The rules, in order:
1. Nothing deployed yet: take the optimum ("initial").
2. The current replicas cannot serve the observed demand within the SLO: move at once ("scale-up"),
   whatever the cooldown.
3. The optimum (solved with a move cost against the current allocation, so near-ties keep what
   runs) is the current allocation: keep.
4. It saves at least `minSavingsPercent` of the current $/h and the cooldown has passed since the
   last change: move ("rebalance"; a fall to the floors when traffic stopped is one of these).
5. Otherwise keep, and say why ("kept: saving 2.1% < 5%", "kept: cooldown, 4m of 10m passed").
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from melange.solver.allocation import SolveReport
from melange.solver.ilp import IlpSettings
from melange.solver.problem import Problem
from melange.solver.solve import allocate

# $/h charged per replica added or removed, as a share of the cheapest replica's $/h: enough to
# break near-ties towards what runs, far below any saving worth a move.
MOVE_COST_SHARE = 0.02


@dataclass(frozen=True)
class Decision:
    """`kind`: initial, scale-up, rebalance (all three move to `target`) or keep (`target` = current)."""

    kind: str
    target: Mapping[str, int]
    reason: str
    saving_percent: float | None = None

    @property
    def moves(self) -> bool:
        return self.kind != "keep"


def move_cost(problem: Problem) -> float:
    """The move cost ($/h per replica moved) for this problem's options."""
    return MOVE_COST_SHARE * min(o.replica_price for o in problem.options)


def cost_of(problem: Problem, replicas: Mapping[str, int]) -> float:
    """$/h of an allocation (whole nodes for options priced by the node)."""
    return sum(o.cost(replicas.get(o.name, 0)) for o in problem.options)


def covers(problem: Problem, replicas: Mapping[str, int], settings: IlpSettings, mode: str) -> bool:
    """Whether `replicas` can serve the problem's workload within its SLO and headroom: the ILP with
    each option's quota cut to what runs has a solution."""
    capped = tuple(replace(o, max_replicas=min(replicas.get(o.name, 0), o.max_replicas)
                           if o.max_replicas is not None else replicas.get(o.name, 0),
                           min_replicas=min(o.min_replicas, replicas.get(o.name, 0))) for o in problem.options)
    try:
        return allocate(Problem(problem.workload, capped, problem.profiles), settings, mode).solved
    except ValueError:  # InfeasibleError: some bucket no option can serve at all
        return False


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f}m" if seconds >= 120 else f"{seconds:.0f}s"


def decide(current: Mapping[str, int] | None, candidate: SolveReport, problem: Problem, current_covers: bool,
           min_savings_percent: float, cooldown_s: float, since_change_s: float | None) -> Decision:
    """What to do with `candidate` (the optimum for the observed workload) given what runs now.
    `since_change_s` None means no change was ever made (no cooldown to respect)."""
    target = dict(candidate.allocation.replicas)
    new_cost = candidate.allocation.cost_per_hour
    if not current or not any(current.values()):
        if not any(target.values()):
            return Decision("keep", dict(current or {}), "no traffic and no floors: nothing to run")
        return Decision("initial", target, f"first allocation at ${new_cost:.2f}/h")
    if not current_covers:
        return Decision("scale-up", target, f"demand exceeds what runs: moving to ${new_cost:.2f}/h at once")
    old_cost = cost_of(problem, current)
    if all(target.get(name, 0) == current.get(name, 0) for name in set(target) | set(current)):
        return Decision("keep", dict(current), f"kept: already optimal at ${old_cost:.2f}/h")
    saving = 100.0 * (old_cost - new_cost) / old_cost if old_cost > 0 else 0.0
    if saving < min_savings_percent:
        return Decision("keep", dict(current), f"kept: saving {saving:.1f}% < {min_savings_percent:g}%", saving)
    if since_change_s is not None and since_change_s < cooldown_s:
        return Decision("keep", dict(current), f"kept: saving {saving:.1f}% waits for the cooldown "
                                               f"({_duration(since_change_s)} of {_duration(cooldown_s)} passed)", saving)
    return Decision("rebalance", target, f"saving {saving:.1f}%: ${old_cost:.2f}/h -> ${new_cost:.2f}/h", saving)
