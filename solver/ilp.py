"""The Mélange ILP (Griggs et al. 2024, Sec. 5) in its counting form, built with PuLP.

The paper assigns each of `slice_factor` equal slices of a bucket to one GPU option with a binary
x[s, g]. Slices of one bucket are identical, so we count them instead: an integer
y[k, g] in 0..slice_factor says how many slices of item k go to option g. Every assignment of the
binary form maps to one of the counting form with the same loads and cost, and back, so both have
the same optimum; the counting form has |items| x |options| variables instead of
|items| x slice_factor x |options| and none of the binary form's symmetry.

    minimise    sum_g replica_price[g] * n[g]  (+ move_cost * |n[g] - current[g]|)
    subject to  sum_g y[k, g] = S                               for every item k
                sum_k (rate[k] / S) * sec[k, g] * y[k, g] <= u * n[g]   for every option g
                n[g] <= quota[g]; sum_g n[g] >= min_total;
                sum_{k, g spot} (rate[k] / S) * y[k, g] <= max_spot_share * total rate

`sec[k, g]` = 1 / max_rps[g, k] is the replica-seconds one request of item k costs on option g; a
pair with no profile entry gets no variable at all (it is forbidden, never divided by zero).

**Node pricing** (an extension, off unless an option has a node shape and price): an option sold in
whole nodes of `r[g]` replicas at `node_price[g]` gets an integer node count m[g], and its term in
the objective is the nodes' price instead of the replicas':

    ... + node_price[g] * m[g] + TIE * n[g],    with  r[g] * m[g] >= n[g]

TIE (REPLICA_TIE_BREAK, a millionth of a dollar per replica-hour, never reported) makes the fewest
replicas win among answers with the same nodes: replicas inside a bought node are otherwise free.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pulp

from melange.solver.branching import branch_and_bound, load_values, round_by_groups
from melange.solver.errors import InfeasibleError, InputError
from melange.solver.memo import SolveMemo

SOLVERS = ("highs", "cbc")
DEFAULT_SOLVER = "highs"
# Proven optimality, not the solvers' default 1e-4 relative gap: prices differ by cents.
_GAP_REL = 1e-9
_GAP_ABS = 1e-7
# Loads within this many replicas of an integer count as fitting it (solver feasibility tolerance).
LOAD_TOLERANCE = 1e-6
# $/h per replica of a node-priced option in the objective only: among answers buying the same nodes,
# the one with the fewest replicas (spare GPUs stay idle rather than run replicas nobody asked for).
REPLICA_TIE_BREAK = 1e-6


@dataclass(frozen=True)
class Item:
    """A unit of traffic to place: one bucket (paper mode) or one input bucket (routable mode).

    `seconds_per_request[g]` is the replica-seconds one request costs on option g (1 / max req/s),
    None where option g cannot serve it.
    """

    label: str
    rate: float
    seconds_per_request: tuple[float | None, ...]


@dataclass(frozen=True)
class OptionSpec:
    """What the ILP needs of a GPU option. With `replicas_per_node` and `node_price` both set the
    option is bought in whole nodes of that many replicas at that $/h each; otherwise by replica."""

    name: str
    replica_price: float
    max_replicas: int | None = None
    spot: bool = False
    min_replicas: int = 0
    replicas_per_node: int | None = None
    node_price: float | None = None

    @property
    def node_priced(self) -> bool:
        return self.replicas_per_node is not None and self.node_price is not None

    def cost(self, replicas: int) -> float:
        """$/h of `replicas` replicas: the nodes they fill when node-priced, else the replicas."""
        if self.node_priced:
            return math.ceil(replicas / self.replicas_per_node) * self.node_price
        return replicas * self.replica_price


@dataclass(frozen=True)
class IlpSettings:
    """Solver choice and the optional extensions; the defaults are the paper's model exactly."""

    slice_factor: int = 8
    solver: str = DEFAULT_SOLVER
    time_limit_s: float | None = None
    target_utilisation: float = 1.0
    min_total_replicas: int = 0
    max_spot_share: float | None = None
    current: Mapping[str, int] = field(default_factory=dict)
    move_cost: float = 0.0


@dataclass(frozen=True)
class IlpSolution:
    """`status`: optimal (proven), feasible (not proven; `gap` bounds the distance to optimal),
    infeasible, or no_solution (time limit hit before any solution)."""

    status: str
    replicas: tuple[int, ...]
    slices: tuple[tuple[int, ...], ...]
    loads: tuple[float, ...]
    cost_per_hour: float
    gap: float | None
    solver: str
    wall_time_s: float


def check_settings(settings: IlpSettings, where: str = "settings") -> None:
    """Raise InputError for a setting outside what is allowed."""
    if settings.solver not in SOLVERS:
        raise InputError(f"{where}.solver", f"unknown solver {settings.solver!r}", ", ".join(SOLVERS))
    if isinstance(settings.slice_factor, bool) or not isinstance(settings.slice_factor, int) \
            or settings.slice_factor < 1:
        raise InputError(f"{where}.slice_factor", f"got {settings.slice_factor!r}", "an integer >= 1")
    if not (0 < settings.target_utilisation <= 1) or math.isnan(settings.target_utilisation):
        raise InputError(f"{where}.target_utilisation", f"got {settings.target_utilisation!r}", "0 < u <= 1")
    if settings.min_total_replicas < 0:
        raise InputError(f"{where}.min_total_replicas", f"got {settings.min_total_replicas!r}", "an integer >= 0")
    if settings.max_spot_share is not None and not (0 <= settings.max_spot_share <= 1):
        raise InputError(f"{where}.max_spot_share", f"got {settings.max_spot_share!r}", "0 <= share <= 1")
    if not (settings.move_cost >= 0) or math.isinf(settings.move_cost):
        raise InputError(f"{where}.move_cost", f"got {settings.move_cost!r}", "a finite number >= 0")
    if settings.time_limit_s is not None and not (settings.time_limit_s > 0):
        raise InputError(f"{where}.time_limit_s", f"got {settings.time_limit_s!r}", "a number > 0")


_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved_stdout = -1


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 while native solvers run: HiGHS prints its banner on stdout even
    when told to be quiet, and the CLI promises clean JSON there. Solves in several threads (the
    operator's) share one redirection: the first in silences, the last out restores."""
    global _quiet_depth, _saved_stdout
    with _quiet_lock:
        if _quiet_depth == 0:
            sys.stdout.flush()
            _saved_stdout = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                sys.stdout.flush()
                os.dup2(_saved_stdout, 1)
                os.close(_saved_stdout)


def _solver(name: str, time_limit_s: float | None, mip: bool = True) -> pulp.LpSolver:
    if name == "highs":
        return pulp.HiGHS(msg=False, mip=mip, gapRel=_GAP_REL, gapAbs=_GAP_ABS, threads=1, timeLimit=time_limit_s)
    # CBC's default preprocessing returned a wrong "Optimal" on a 2-bucket instance (tests/solver/
    # test_ilp.py::test_cbc_default_trap); with preprocessing off it matched brute force everywhere.
    with warnings.catch_warnings():  # PuLP 3.3 deprecates the bundled-CBC class it still ships
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, mip=mip, gapRel=_GAP_REL, gapAbs=_GAP_ABS, timeLimit=time_limit_s,
                                 options=["preprocess off"])


def unservable(items: Sequence[Item]) -> list[str]:
    """Labels of the items with traffic that no option can serve."""
    return [item.label for item in items
            if item.rate > 0 and all(s is None for s in item.seconds_per_request)]


_memo: SolveMemo | None = None


def use_memo(memo: SolveMemo | None) -> None:
    """Keep the answers of solve_ilp in `memo` from now on (None: solve every time, the default). The
    operator uses one: it solves the same inputs again and again (solver/memo.py)."""
    global _memo
    _memo = memo


def _memo_key(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings) -> bytes:
    """Exactly what a solve depends on (the current allocation in a fixed order)."""
    return SolveMemo.key(tuple(items), tuple(options), replace(settings, current={}),
                         tuple(sorted(settings.current.items())))


def solve_ilp(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings) -> IlpSolution:
    """Find the cheapest replica counts and slice assignment serving every item.

    Raises InfeasibleError when some item with traffic has no option able to serve it; returns
    status 'infeasible' when the extensions (quotas, spot share) make the model infeasible. With a memo
    in use (use_memo), a solve of inputs already solved returns that answer (its wall time: the look-up).
    """
    check_settings(settings)
    missing = unservable(items)
    if missing:
        raise InfeasibleError(missing)
    memo = _memo
    if memo is None:
        return _solve_ilp(items, options, settings)
    started = time.perf_counter()
    key = _memo_key(items, options, settings)
    known = memo.get(key)
    if known is not None:
        return replace(known, wall_time_s=time.perf_counter() - started)
    solution = _solve_ilp(items, options, settings)
    if solution.status in ("optimal", "infeasible"):  # proven: the same inputs give the same answer
        memo.put(key, solution)
    return solution


# Answers needing more replicas than this are not given: the solvers' tolerances are absolute (1e-6 on
# integrality, 1e-7 on feasibility), so on doubles of 16 significant digits counts past 1e9 carry no
# exact integer meaning and a claimed optimum there was seen to cost more than a single GPU type.
MAX_REPLICAS = 10 ** 9


def fewest_replicas(items: Sequence[Item], settings: IlpSettings) -> float:
    """A lower bound on the replicas any answer needs: each item on the option that serves it fastest."""
    need = sum(item.rate * min(s for s in item.seconds_per_request if s is not None)
               for item in items if item.rate > 0 and any(s is not None for s in item.seconds_per_request))
    return need / settings.target_utilisation


def _solve_ilp(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings) -> IlpSolution:
    started = time.perf_counter()
    if fewest_replicas(items, settings) > MAX_REPLICAS:
        return _empty("no_solution", items, options, settings, started)
    # Stage 1: slices relaxed to fractions, replicas integer. Its optimum bounds the true one from
    # below; when its split rounds to whole slices within the same replicas, that bound is met and
    # the rounded answer is proven optimal. This is much faster than branching on the slices.
    relaxed, n, y = _build(items, options, settings, integer_slices=False)
    _run_few_integers(relaxed, settings.solver, settings.time_limit_s)
    relaxed_status = _status(relaxed)
    if relaxed_status == "infeasible":
        return _empty("infeasible", items, options, settings, started)
    if relaxed_status == "optimal":
        replicas = [_integer_value(v) for v in n]
        counts = _round_slices(items, options, settings, replicas,
                               {key: var.varValue or 0.0 for key, var in y.items()})
        if counts is None:
            spread = _least_load_split(items, options, settings, replicas)
            if spread is not None:
                counts = _round_slices(items, options, settings, replicas, spread) \
                    or _search_slices(items, options, settings, replicas, spread)
            if counts is not None and not _fits(items, options, settings, replicas, counts):
                counts = None
        if counts is None:
            counts = _fit_slices(items, options, settings, replicas)
        if counts is not None:
            return _solution("optimal", items, options, settings, [_integer_value(v) for v in n], counts, 0.0,
                             started)
    # Stage 2: the exact counting-form MIP.
    remaining = None if settings.time_limit_s is None else max(0.01, settings.time_limit_s - (time.perf_counter() - started))
    model, n, y = _build(items, options, settings, integer_slices=True)
    _run(model, settings.solver, remaining)
    status = _status(model)
    if status in ("infeasible", "no_solution"):
        return _empty(status, items, options, settings, started)
    counts = [[_integer_value(y.get((k, g))) for g in range(len(options))] for k in range(len(items))]
    solution = _solution(status, items, options, settings, [_integer_value(v) for v in n], counts, None, started)
    if status == "optimal":
        return solution
    gap = _gap(items, options, settings, solution.cost_per_hour)
    return IlpSolution(status, solution.replicas, solution.slices, solution.loads, solution.cost_per_hour, gap,
                       settings.solver, time.perf_counter() - started)


def _run(model: pulp.LpProblem, solver: str, time_limit_s: float | None, mip: bool = True) -> None:
    with _quiet_stdout():
        model.solve(_solver(solver, time_limit_s, mip))


# Models with at most this many integer columns are solved by our own branch and bound (few options:
# milliseconds) rather than HiGHS's MIP solver (tens of milliseconds of set-up); solver/branching.py.
# With 16 (bench/solver_speed.py's 16-option instance) HiGHS's MIP solver was 2-5 times faster.
BRANCH_MAX_INTEGERS = 8
BRANCH_NODE_LIMIT = 2000


def _run_few_integers(model: pulp.LpProblem, solver: str, time_limit_s: float | None) -> None:
    """Solve a model whose only integer columns are the replica (and node) counts: by branch and bound
    on HiGHS's LP when they are few, else (or when it gives up) by the MIP solver."""
    if solver == "highs" and sum(v.cat == pulp.LpInteger for v in model.variables()) <= BRANCH_MAX_INTEGERS:
        with _quiet_stdout():
            result = branch_and_bound(model, _GAP_REL, _GAP_ABS, BRANCH_NODE_LIMIT)
        if result.status != "limit":
            load_values(model, result)
            return
    _run(model, solver, time_limit_s)


def _empty(status: str, items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings,
           started: float) -> IlpSolution:
    zeros = tuple(0 for _ in options)
    return IlpSolution(status, zeros, tuple(zeros for _ in items), tuple(0.0 for _ in options), math.nan, None,
                       settings.solver, time.perf_counter() - started)


def _solution(status: str, items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings,
              replicas: Sequence[int], counts: Sequence[Sequence[int]], gap: float | None,
              started: float) -> IlpSolution:
    """Recompute loads exactly from whole slices; replicas never fall below what the loads need."""
    slices = tuple(tuple(row) for row in counts)
    loads = _loads(items, options, slices, settings.slice_factor)
    final = tuple(max(r, _needed(load, settings.target_utilisation)) for r, load in zip(replicas, loads))
    cost = sum(o.cost(r) for o, r in zip(options, final))
    return IlpSolution(status, final, slices, loads, cost, gap, settings.solver, time.perf_counter() - started)


def _fit_slices(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings,
                replicas: Sequence[int]) -> list[list[int]] | None:
    """Whole slices that fit exactly `replicas`, found by a feasibility MIP, or None."""
    fixed = [replace(o, max_replicas=r, min_replicas=0) for o, r in zip(options, replicas)]
    model, n, y = _build(items, fixed, replace(settings, min_total_replicas=0, move_cost=0.0), integer_slices=True)
    for var, count in zip(n, replicas):
        var.lowBound = count
    if settings.solver == "highs":
        # First the LP-guided rounding on the split of least load, heaviest items first (solver/branching.py).
        model.setObjective(_load_objective(items, y, settings.slice_factor))
        order = sorted((k for k, item in enumerate(items) if item.rate > 0), key=lambda k: -_heaviest_slice(items[k]))
        groups = [[y[k, g] for g in range(len(options)) if (k, g) in y] for k in order]
        with _quiet_stdout():
            values = round_by_groups(model, groups, settings.slice_factor, DIVE_NODE_LIMIT)
        if values is not None:
            model.assignVarsVals(values)
            counts = [[_integer_value(y.get((k, g))) for g in range(len(options))] for k in range(len(items))]
            if _fits(items, options, settings, replicas, counts):
                return counts
    model.setObjective(pulp.lpSum(n))  # constant: n is fixed; CBC rejects an all-zero objective
    try:
        _run(model, settings.solver, settings.time_limit_s)
    except pulp.PulpSolverError:  # bundled CBC 2.10 can crash on some infeasible fixed models
        return None
    if model.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None
    counts = [[_integer_value(y.get((k, g))) for g in range(len(options))] for k in range(len(items))]
    return counts if _fits(items, options, settings, replicas, counts) else None


DIVE_NODE_LIMIT = 200  # LPs the item-by-item rounding may solve before the feasibility MIP runs


def _load_objective(items: Sequence[Item], y: Mapping[tuple[int, int], pulp.LpVariable],
                    slice_factor: int) -> pulp.LpAffineExpression:
    """Replica-seconds of a split: the least of it leaves the most room for whole slices."""
    return pulp.LpAffineExpression(
        {var: items[k].rate / slice_factor * items[k].seconds_per_request[g] for (k, g), var in y.items()})


def _heaviest_slice(item: Item) -> float:
    """The load of one slice of `item` on the slowest option that serves it."""
    return item.rate * max(sec for sec in item.seconds_per_request if sec is not None)


def _fits(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings, replicas: Sequence[int],
          counts: Sequence[Sequence[int]]) -> bool:
    """Whether whole slices `counts` place every slice and fit `replicas` exactly as `_solution` counts
    them (so a rounding never claims the bound with more replicas than it has), spot share included."""
    s = settings.slice_factor
    if any(sum(row) != s for item, row in zip(items, counts) if item.rate > 0):
        return False
    loads = _loads(items, options, counts, s)
    return all(_needed(load, settings.target_utilisation) <= r for load, r in zip(loads, replicas)) \
        and _spot_share_holds(items, options, settings, counts)


def _least_load_split(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings,
                      replicas: Sequence[int]) -> dict[tuple[int, int], float] | None:
    """The fractional split within exactly `replicas` that uses the fewest replica-seconds (an LP).

    The first stage's split is any one that fits its replicas, and its vertex tends to fill every option
    to the brim (work moved to slower options costs nothing there); rounding it then has no room. The
    split of least total load leaves the most room, so whole slices fit far more often."""
    fixed = [replace(o, max_replicas=r, min_replicas=0) for o, r in zip(options, replicas)]
    model, n, y = _build(items, fixed, replace(settings, min_total_replicas=0, move_cost=0.0), integer_slices=False)
    for var, count in zip(n, replicas):
        var.lowBound = count
    model.setObjective(_load_objective(items, y, settings.slice_factor))
    _run(model, settings.solver, None, mip=False)
    if model.sol_status != pulp.LpSolutionOptimal:
        return None
    return {key: var.varValue or 0.0 for key, var in y.items()}


# Nodes the rounding search may visit before the feasibility MIP takes over.
SEARCH_NODE_LIMIT = 10000
SEARCH_MAX_SLICES = 500  # more slices left to place than this: the feasibility MIP (and no deep recursion)


def _search_slices(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings,
                   replicas: Sequence[int], fractional: Mapping[tuple[int, int], float]) -> list[list[int]] | None:
    """Whole slices within `replicas`, by depth-first search guided by a fractional split: items the split
    gives whole slices keep them, and the slices of the items it splits in fractions (at most as many as
    there are options, at a vertex of its LP) are placed one at a time, heaviest item first, options with
    the largest share of the item first, backtracking when a slice fits nowhere. None when nothing is
    found within SEARCH_NODE_LIMIT nodes (or the spot share does not hold): the caller then tries harder.
    (Searching every item's slices this way, to move whole items too, ran into the node limit on the
    paper's instance: chronological backtracking undoes the lightest items first, rarely the ones in
    the way.)"""
    s, u = settings.slice_factor, settings.target_utilisation
    room = [u * r + u * LOAD_TOLERANCE for r in replicas]
    counts = [[0] * len(options) for _ in items]
    split: list[int] = []
    for k, item in enumerate(items):
        if item.rate <= 0:
            continue
        shares = {g: fractional.get((k, g), 0.0) for g, sec in enumerate(item.seconds_per_request) if sec is not None}
        if any(abs(share - round(share)) > 1e-7 for share in shares.values()):
            split.append(k)
            continue
        for g, share in shares.items():
            counts[k][g] = int(round(share))
            room[g] -= counts[k][g] * item.rate / s * item.seconds_per_request[g]
        if sum(counts[k]) != s:
            return None

    def heaviest(k: int) -> tuple[float, int]:
        return -items[k].rate * max(sec for sec in items[k].seconds_per_request if sec is not None), k

    slices = [k for k in sorted(split, key=heaviest) for _ in range(s)]
    if any(r < 0 for r in room) or len(slices) > SEARCH_MAX_SLICES:
        return None
    orders = {k: sorted((g for g, sec in enumerate(items[k].seconds_per_request) if sec is not None),
                        key=lambda g: (-fractional.get((k, g), 0.0), g)) for k in set(slices)}
    nodes = 0

    def place(i: int, floor_rank: int) -> bool:
        nonlocal nodes
        if i == len(slices):
            return True
        k = slices[i]
        item = items[k]
        order = orders[k]
        # Slices of one item are alike: the next one goes to an option no earlier in the item's order than
        # the previous one's, so each way of splitting the item is tried once.
        start = floor_rank if i > 0 and slices[i - 1] == k else 0
        for rank in range(start, len(order)):
            g = order[rank]
            need = item.rate / s * item.seconds_per_request[g]
            if room[g] < need:
                continue
            nodes += 1
            if nodes > SEARCH_NODE_LIMIT:
                return False
            room[g] -= need
            counts[k][g] += 1
            if place(i + 1, rank):
                return True
            room[g] += need
            counts[k][g] -= 1
        return False

    if not place(0, 0) or not _spot_share_holds(items, options, settings, counts):
        return None
    return counts


def _spot_share_holds(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings,
                      counts: Sequence[Sequence[int]]) -> bool:
    if settings.max_spot_share is None:
        return True
    s = settings.slice_factor
    total = sum(item.rate for item in items if item.rate > 0)
    spot = sum(item.rate / s * counts[k][g] for k, item in enumerate(items)
               for g, option in enumerate(options) if option.spot)
    return spot <= settings.max_spot_share * total + 1e-9


def _round_slices(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings,
                  replicas: Sequence[int], fractional: Mapping[tuple[int, int], float]) -> list[list[int]] | None:
    """Round a fractional split to whole slices that still fit `replicas` (and the spot share), or None.

    Whole parts stay; each item's remaining slices go, largest slice first, to the option with the
    largest fractional part that still has room."""
    s, u = settings.slice_factor, settings.target_utilisation
    room = [u * r + u * LOAD_TOLERANCE for r in replicas]
    counts = [[0] * len(options) for _ in items]
    pending: list[tuple[float, int]] = []
    for k, item in enumerate(items):
        if item.rate <= 0:
            continue
        for g, seconds in enumerate(item.seconds_per_request):
            if seconds is not None:
                counts[k][g] = int(math.floor(fractional.get((k, g), 0.0) + 1e-7))
                room[g] -= counts[k][g] * item.rate / s * seconds
        if sum(counts[k]) > s:
            return None
        pending.append((item.rate * max(sec for sec in item.seconds_per_request if sec is not None), k))
    for _, k in sorted(pending, reverse=True):
        item = items[k]
        for _ in range(s - sum(counts[k])):
            fits = [g for g, sec in enumerate(item.seconds_per_request)
                    if sec is not None and room[g] >= item.rate / s * sec]
            if not fits:
                return None
            g = max(fits, key=lambda g: (fractional.get((k, g), 0.0) - counts[k][g], room[g]))
            counts[k][g] += 1
            room[g] -= item.rate / s * item.seconds_per_request[g]
    if settings.max_spot_share is not None:
        total = sum(item.rate for item in items if item.rate > 0)
        spot = sum(item.rate / s * counts[k][g] for k, item in enumerate(items)
                   for g, option in enumerate(options) if option.spot)
        if spot > settings.max_spot_share * total + 1e-9:
            return None
    return counts


def _build(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings, integer_slices: bool = True):
    s = settings.slice_factor
    model = pulp.LpProblem("melange", pulp.LpMinimize)
    n = [model.add_variable(f"n_{g}", lowBound=o.min_replicas, upBound=o.max_replicas, cat=pulp.LpInteger)
         for g, o in enumerate(options)]
    active = [k for k, item in enumerate(items) if item.rate > 0]
    y: dict[tuple[int, int], pulp.LpVariable] = {}
    load_terms: list[dict[pulp.LpVariable, float]] = [{} for _ in options]
    spot_terms: dict[pulp.LpVariable, float] = {}
    for k in active:
        item = items[k]
        slice_rate = item.rate / s
        for g, seconds in enumerate(item.seconds_per_request):
            if seconds is None:
                continue
            var = model.add_variable(f"y_{k}_{g}", lowBound=0, upBound=s,
                                     cat=pulp.LpInteger if integer_slices else pulp.LpContinuous)
            y[k, g] = var
            load_terms[g][var] = slice_rate * seconds
            if options[g].spot:
                spot_terms[var] = slice_rate
        model += pulp.LpAffineExpression({y[k, g]: 1 for g in range(len(options)) if (k, g) in y}) == s, f"all_{k}"
    u = settings.target_utilisation
    for g in range(len(options)):
        terms = dict(load_terms[g])
        terms[n[g]] = -u
        model += pulp.LpAffineExpression(terms) <= 0, f"capacity_{g}"
    if settings.min_total_replicas:
        model += pulp.lpSum(n) >= settings.min_total_replicas, "min_total"
    if settings.max_spot_share is not None and spot_terms:
        total = sum(items[k].rate for k in active)
        model += pulp.LpAffineExpression(spot_terms) <= settings.max_spot_share * total, "spot_share"
    objective: dict[pulp.LpVariable, float] = {}
    for g, option in enumerate(options):
        if option.node_priced:
            top = None if option.max_replicas is None else math.ceil(option.max_replicas / option.replicas_per_node)
            nodes = model.add_variable(f"m_{g}", lowBound=0, upBound=top, cat=pulp.LpInteger)
            model += option.replicas_per_node * nodes - n[g] >= 0, f"nodes_{g}"
            objective[nodes] = option.node_price
            objective[n[g]] = REPLICA_TIE_BREAK
        else:
            objective[n[g]] = option.replica_price
    if settings.move_cost > 0:
        for g, option in enumerate(options):
            moved = model.add_variable(f"moved_{g}", lowBound=0)
            current = settings.current.get(option.name, 0)
            model += moved >= n[g] - current, f"grow_{g}"
            model += moved >= current - n[g], f"shrink_{g}"
            objective[moved] = settings.move_cost
    model += pulp.LpAffineExpression(objective)
    return model, n, y


def _status(model: pulp.LpProblem) -> str:
    # PuLP 3.x reads "Optimal" in LpStatus for a run stopped by its time limit; sol_status tells.
    if model.sol_status == pulp.LpSolutionOptimal:
        return "optimal"
    if model.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible"
    if model.status == pulp.LpStatusInfeasible or model.sol_status == pulp.LpSolutionInfeasible:
        return "infeasible"
    return "no_solution"


def _integer_value(var: pulp.LpVariable | None) -> int:
    if var is None or var.varValue is None:
        return 0
    return int(round(var.varValue))


def _loads(items: Sequence[Item], options: Sequence[OptionSpec], slices: Sequence[Sequence[int]],
           slice_factor: int) -> tuple[float, ...]:
    """Replica-equivalents of work per option, recomputed exactly from the integer assignment."""
    loads = [0.0] * len(options)
    for item, counts in zip(items, slices):
        for g, count in enumerate(counts):
            if count:
                loads[g] += item.rate / slice_factor * count * item.seconds_per_request[g]
    return tuple(loads)


def _needed(load: float, utilisation: float) -> int:
    """Replicas that carry `load` at the target utilisation."""
    return max(0, math.ceil(load / utilisation - LOAD_TOLERANCE))


def _gap(items: Sequence[Item], options: Sequence[OptionSpec], settings: IlpSettings, cost: float) -> float | None:
    """Relative distance of `cost` to a proven lower bound (the LP relaxation's optimum)."""
    relaxed, *_ = _build(items, options, settings)
    # No time limit: the LP takes milliseconds, and a limit already spent left the gap unknown.
    _run(relaxed, settings.solver, None, mip=False)
    if relaxed.sol_status != pulp.LpSolutionOptimal or not cost:
        return None
    bound = pulp.value(relaxed.objective) or 0.0
    return max(0.0, (cost - bound) / cost)
