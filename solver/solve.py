"""From a checked Problem to a SolveReport: items per mode, the ILP, single-type baselines."""
from __future__ import annotations

import math
from collections.abc import Sequence

from melange.solver.allocation import Allocation, BucketSplit, OptionUse, SolveReport
from melange.solver.errors import InputError
from melange.solver.ilp import LOAD_TOLERANCE, IlpSettings, IlpSolution, Item, OptionSpec, solve_ilp
from melange.solver.problem import Problem

MODES = ("paper", "routable")


def paper_items(problem: Problem) -> list[Item]:
    """One item per 2-D bucket with traffic: the paper's model, where each request's bucket is known."""
    grid = problem.workload.grid
    items = []
    for i, j, rate in problem.workload.bucket_rates():
        seconds = tuple(None if p.max_rps[i][j] is None else 1.0 / p.max_rps[i][j] for p in problem.profiles)
        items.append(Item(grid.label(i, j), rate, seconds))
    return items


def routable_items(problem: Problem) -> list[Item]:
    """One item per input bucket with traffic. A router sees only the input length on arrival, so all
    requests of an input bucket share one split; the cost of a request is averaged over the observed
    output mix of its input bucket, and an option must serve every output bucket seen there."""
    workload, grid = problem.workload, problem.workload.grid
    items = []
    for i, row in enumerate(workload.distribution):
        share = sum(row)
        if share <= 0:
            continue
        seconds: list[float | None] = []
        for profile in problem.profiles:
            total = 0.0
            for j, cell in enumerate(row):
                if cell <= 0:
                    continue
                rate = profile.max_rps[i][j]
                if rate is None:
                    total = math.nan
                    break
                total += (cell / share) / rate
            seconds.append(None if math.isnan(total) else total)
        items.append(Item(grid.input_label(i), workload.rate * share, tuple(seconds)))
    return items


def _indices(problem: Problem, mode: str) -> list[tuple[int, ...]]:
    if mode == "paper":
        return [(i, j) for i, j, _ in problem.workload.bucket_rates()]
    return [(i,) for i, share in enumerate(problem.workload.input_shares()) if share > 0]


def option_specs(problem: Problem) -> list[OptionSpec]:
    """The ILP's view of the options (node-priced ones with their node size and price)."""
    return [OptionSpec(o.name, o.replica_price, o.max_replicas, o.spot, o.min_replicas,
                       replicas_per_node=o.replicas_per_node if o.node_priced else None,
                       node_price=o.node_price_per_hour if o.node_priced else None) for o in problem.options]


def allocate(problem: Problem, settings: IlpSettings, mode: str = "paper") -> Allocation:
    """Solve one mode and describe the allocation per option and per item."""
    if mode not in MODES:
        raise InputError("mode", f"unknown mode {mode!r}", ", ".join(MODES))
    items = paper_items(problem) if mode == "paper" else routable_items(problem)
    solution = solve_ilp(items, option_specs(problem), settings)
    return _describe(problem, items, _indices(problem, mode), solution, settings, mode)


def _describe(problem: Problem, items: Sequence[Item], indices: Sequence[tuple[int, ...]], solution: IlpSolution,
              settings: IlpSettings, mode: str) -> Allocation:
    s = settings.slice_factor
    uses = []
    for g, option in enumerate(problem.options):
        replicas = solution.replicas[g]
        routed = sum(item.rate * counts[g] / s for item, counts in zip(items, solution.slices))
        uses.append(OptionUse(option.name, replicas, replicas * option.gpus_per_replica,
                              option.cost(replicas), routed, solution.loads[g],
                              solution.loads[g] / replicas if replicas else None, option.nodes(replicas)))
    splits = tuple(BucketSplit(item.label, index, item.rate,
                               {o.name: counts[g] / s for g, o in enumerate(problem.options)})
                   for item, index, counts in zip(items, indices, solution.slices))
    return Allocation(mode, solution.status, solution.cost_per_hour, tuple(uses), splits, solution.gap,
                      solution.solver, solution.wall_time_s)


def single_type_replicas(problem: Problem, settings: IlpSettings) -> dict[str, int | None]:
    """Replicas each option needs to serve everything alone (the paper's baseline,
    ceil(sum_b rate_b / max_b)), under the same quota, utilisation, minimum and spot limits;
    None where that option alone cannot serve the workload."""
    result: dict[str, int | None] = {}
    items = paper_items(problem)
    for g, option in enumerate(problem.options):
        if any(item.seconds_per_request[g] is None for item in items):
            result[option.name] = None
            continue
        load = sum(item.rate * item.seconds_per_request[g] for item in items)
        replicas = max(math.ceil(load / settings.target_utilisation - LOAD_TOLERANCE), settings.min_total_replicas,
                       option.min_replicas)
        over_quota = option.max_replicas is not None and replicas > option.max_replicas
        spot_capped = option.spot and settings.max_spot_share is not None and settings.max_spot_share < 1 \
            and problem.workload.rate > 0
        result[option.name] = None if over_quota or spot_capped else replicas
    return result


def other_mode(mode: str) -> str:
    """The split mode that is not `mode`."""
    return "routable" if mode == "paper" else "paper"


def solve(problem: Problem, settings: IlpSettings | None = None, mode: str = "paper",
          compare_modes: bool = True) -> SolveReport:
    """Solve the problem in `mode` and, with `compare_modes`, in the other mode too, so the price of
    routability is visible; add the single-type baselines."""
    settings = settings or IlpSettings()
    allocation = allocate(problem, settings, mode)
    other = None
    if compare_modes:
        other = allocate(problem, settings, other_mode(mode))
    return _report(problem, settings, allocation, other)


def unservable_report(problem: Problem, settings: IlpSettings | None = None, mode: str = "paper") -> SolveReport:
    """The report of a problem with traffic no option can serve (what `solve` raises InfeasibleError
    for): status 'infeasible', no replicas, and the single types' baselines (none can serve alone).
    For a sweep, which keeps such a rate as a row beside the others."""
    settings = settings or IlpSettings()
    uses = tuple(OptionUse(o.name, 0, 0, 0.0, 0.0, 0.0, None, o.nodes(0)) for o in problem.options)
    allocation = Allocation(mode, "infeasible", math.nan, uses, (), None, settings.solver, 0.0)
    return _report(problem, settings, allocation, None)


def _report(problem: Problem, settings: IlpSettings, allocation: Allocation, other: Allocation | None) -> SolveReport:
    replicas = single_type_replicas(problem, settings)
    costs = {o.name: None if replicas[o.name] is None else o.cost(replicas[o.name]) for o in problem.options}
    sources = {o.name: p.source for o, p in zip(problem.options, problem.profiles)}
    models = {p.model for p in problem.profiles if p.model != "unknown"}
    slos = {p.slo for p in problem.profiles if p.slo is not None}
    moves = {}
    if settings.move_cost > 0 and allocation.solved:
        moves = {name: n - settings.current.get(name, 0) for name, n in allocation.replicas.items()
                 if n != settings.current.get(name, 0)}
    return SolveReport(allocation, other, costs, replicas, problem.workload.rate, problem.workload.notes, sources,
                       model=models.pop() if len(models) == 1 else None, slo=slos.pop() if len(slos) == 1 else None,
                       rate_source=problem.workload.rate_source, move_cost=settings.move_cost, moves=moves,
                       floors={o.name: o.min_replicas for o in problem.options})
