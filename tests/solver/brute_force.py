"""An independent, exhaustive solver for tiny instances: the paper's per-slice binary form, every
slice tried on every option. Used to prove the ILP's answers optimal."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from melange.solver.ilp import LOAD_TOLERANCE, IlpSettings, Item, OptionSpec


def brute_force_cost(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings) -> float | None:
    """Cheapest cost over every slice assignment and replica count; None if nothing is feasible."""
    s = settings.slice_factor
    slices = [(k, item) for k, item in enumerate(items) if item.rate > 0 for _ in range(s)]
    choices = [[g for g, sec in enumerate(item.seconds_per_request) if sec is not None] for _, item in slices]
    total_rate = sum(item.rate for item in items if item.rate > 0)
    best = None
    for assignment in itertools.product(*choices):
        loads = [0.0] * len(options)
        spot_rate = 0.0
        for (_, item), g in zip(slices, assignment):
            loads[g] += item.rate / s * item.seconds_per_request[g]
            if options[g].spot:
                spot_rate += item.rate / s
        if settings.max_spot_share is not None and spot_rate > settings.max_spot_share * total_rate + 1e-9:
            continue
        needed = [max(0, math.ceil(load / settings.target_utilisation - LOAD_TOLERANCE)) for load in loads]
        cost = _best_counts(needed, options, settings)
        if cost is not None and (best is None or cost < best - 1e-12):
            best = cost
    return best


def _best_counts(needed: list[int], options: Sequence[OptionSpec], settings: IlpSettings) -> float | None:
    extra = max(settings.min_total_replicas, max(settings.current.values(), default=0)) + 1
    ranges = []
    for g, option in enumerate(options):
        top = needed[g] + extra
        if option.max_replicas is not None:
            top = min(top, option.max_replicas)
        if top < needed[g]:
            return None
        ranges.append(range(needed[g], top + 1))
    best = None
    for counts in itertools.product(*ranges):
        if sum(counts) < settings.min_total_replicas:
            continue
        cost = sum(o.cost(n) for o, n in zip(options, counts))  # whole nodes for node-priced options
        cost += settings.move_cost * sum(abs(n - settings.current.get(o.name, 0)) for o, n in zip(options, counts))
        if best is None or cost < best:
            best = cost
    return best
