"""Whether to move from the current allocation to a new optimum: pure functions, no clock, no API.

The rules, in order:
1. Nothing deployed yet: take the optimum ("initial").
2. The current replicas cannot serve the observed demand within the SLO: move at once ("scale-up"),
   whatever the cooldown. What runs is outside the spec's replica bounds (a raised minReplicas, a
   lowered maxReplicas, a dropped option): move at once ("bounds").
3. The optimum (solved with a move cost against the current allocation, so near-ties keep what
   runs) is the current allocation: keep.
4. It saves at least `minSavingsPercent` of the current $/h and the cooldown has passed since the
   last change: move ("rebalance"; a fall to the floors when traffic stopped is one of these).
5. Otherwise keep, and say why ("kept: saving 2.1% < 5%", "kept: cooldown, 4m of 10m passed").

With a live rate (a count of requests, operator/core/noise.py) "the optimum" is the one for the
rate's upper bound (`Demand.sized`), rule 2 asks about its lower bound (`Demand.low`), and rule 4's
saving is the one still there at a higher upper bound (`Demand.high`, the `ceiling` optimum).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from melange.operator.core.noise import Demand
from melange.solver.allocation import Allocation, SolveReport
from melange.solver.ilp import IlpSettings
from melange.solver.problem import Problem
from melange.solver.solve import allocate

# $/h charged per replica added or removed, as a share of the cheapest replica's $/h: enough to
# break near-ties towards what runs, far below any saving worth a move.
MOVE_COST_SHARE = 0.02


@dataclass(frozen=True)
class Decision:
    """`kind`: initial, scale-up, bounds, rebalance (all four move to `target`) or keep (`target` = current)."""

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


def fit(problem: Problem, replicas: Mapping[str, int], settings: IlpSettings, mode: str) -> Allocation | None:
    """How to route the problem's workload over exactly `replicas` within its SLO and headroom; None when
    they cannot serve it. Replicas beyond what a workload needs never make it unservable (idle replicas
    are allowed and the spot share is a share of the traffic), so this also answers whether any subset
    of them serves it, with no search over counts."""
    fixed = tuple(replace(o, min_replicas=replicas.get(o.name, 0), max_replicas=replicas.get(o.name, 0))
                  for o in problem.options)
    try:
        allocation = allocate(Problem(problem.workload, fixed, problem.profiles),
                              replace(settings, move_cost=0.0, current={}), mode)
    except ValueError:  # InfeasibleError: some bucket no option can serve at all
        return None
    return allocation if allocation.solved else None


def covers(problem: Problem, replicas: Mapping[str, int], settings: IlpSettings, mode: str) -> bool:
    """Whether `replicas` can serve the problem's workload within its SLO and headroom."""
    return fit(problem, replicas, settings, mode) is not None


def outside_bounds(problem: Problem, replicas: Mapping[str, int]) -> str | None:
    """How `replicas` break the options' replica bounds, in a line; None when they keep them."""
    options = {o.name: o for o in problem.options}
    for name, count in sorted(replicas.items()):
        if count > 0 and name not in options:
            return f"{name} runs {count} but is no longer an option"
    for option in problem.options:
        count = replicas.get(option.name, 0)
        if count < option.min_replicas:
            return f"{option.name} runs {count}, below its minReplicas {option.min_replicas}"
        if option.max_replicas is not None and count > option.max_replicas:
            return f"{option.name} runs {count}, above its maxReplicas {option.max_replicas}"
    return None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f}m" if seconds >= 120 else f"{seconds:.0f}s"


def decide(current: Mapping[str, int] | None, candidate: SolveReport, problem: Problem, current_covers: bool,
           min_savings_percent: float, cooldown_s: float, since_change_s: float | None,
           demand: Demand | None = None, ceiling: Allocation | Callable[[], Allocation] | None = None) -> Decision:
    """What to do with `candidate` (the optimum for the observed workload, or for `demand.sized`) given
    what runs now. `current_covers`: whether what runs serves the workload (or `demand.low`).
    `ceiling`: the optimum for `demand.high`, or a function solving for it (called only when a
    rebalance is in question: most passes keep what runs); a rebalance must save `min_savings_percent`
    against it, not only against the candidate (None: against the candidate). `since_change_s` None means no
    change was ever made (no cooldown to respect)."""
    target = dict(candidate.allocation.replicas)
    new_cost = candidate.allocation.cost_per_hour
    noisy = demand is not None and demand.noisy
    if not current or not any(current.values()):
        if not any(target.values()):
            return Decision("keep", dict(current or {}), "no traffic and no floors: nothing to run")
        return Decision("initial", target, f"first allocation at ${new_cost:.2f}/h")
    if not current_covers:
        bound = f": {demand.at_least()}" if noisy else ""
        return Decision("scale-up", target, f"demand exceeds what runs{bound}: moving to ${new_cost:.2f}/h at once")
    outside = outside_bounds(problem, current)
    if outside is not None and candidate.allocation.solved:
        return Decision("bounds", target, f"{outside}: moving to ${new_cost:.2f}/h at once")
    old_cost = cost_of(problem, current)
    if all(target.get(name, 0) == current.get(name, 0) for name in set(target) | set(current)):
        return Decision("keep", dict(current), f"kept: already optimal at ${old_cost:.2f}/h")
    saving = 100.0 * (old_cost - new_cost) / old_cost if old_cost > 0 else 0.0
    sure, bound = saving, ""
    if ceiling is not None:
        ceiling = ceiling() if callable(ceiling) else ceiling
        bound = demand.at_most() if noisy else "the upper bound"
        if not ceiling.solved:
            return Decision("keep", dict(current), f"kept: saving {saving:.1f}% unsure: nothing within the quotas "
                                                   f"serves {bound}", saving)
        sure = 100.0 * (old_cost - ceiling.cost_per_hour) / old_cost if old_cost > 0 else 0.0
        bound = f" at {bound}"
    if ceiling is not None and sure <= 0:
        return Decision("keep", dict(current), f"kept: no saving{bound}", sure)
    if sure < min_savings_percent:
        return Decision("keep", dict(current), f"kept: saving {sure:.1f}%{bound} < {min_savings_percent:g}%", sure)
    if since_change_s is not None and since_change_s < cooldown_s:
        return Decision("keep", dict(current), f"kept: saving {saving:.1f}% waits for the cooldown "
                                               f"({_duration(since_change_s)} of {_duration(cooldown_s)} passed)", saving)
    bound = f", {sure:.1f}%{bound}" if ceiling is not None else ""
    return Decision("rebalance", target, f"saving {saving:.1f}%{bound}: ${old_cost:.2f}/h -> ${new_cost:.2f}/h",
                    saving)
