"""One reconcile of one LLMService as a pure function: observed state in, desired objects, status and
Events out. The kopf handlers feed it what they read and apply what it returns.

    spec -> workload (static, or live from Prometheus) -> solve (with a move cost against what runs)
         -> decide (keep, or move) -> advance the make-before-break move -> plan -> status, Events

Bad input changes nothing: an invalid spec, an infeasible SLO or unusable metrics yield no desired
objects (the shell leaves every owned object as it is) and a status that says why; the last good
allocation stays in status.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from melange.operator.core.decision import Decision, cost_of, covers, decide, move_cost
from melange.operator.core.moves import DEFAULT_DRAIN_S, Move, advance, stage
from melange.operator.core.noise import bounds
from melange.operator.core.planner import OPTION_LABEL, ROUTING_KEY, Images, Owner, plan, pool_url, routing_config_name
from melange.operator.core.problem import Inputs, build_problem, explicit_profiles, service_grid, solver_settings
from melange.operator.core.spec import ServiceSpec, parse_spec
from melange.operator.core.status import condition, condition_status, describe_mix, from_iso, iso, merge_conditions
from melange.solver.allocation import Allocation, OptionUse, SolveReport
from melange.solver.errors import InfeasibleError, InputError
from melange.solver.ilp import IlpSettings
from melange.solver.problem import Problem
from melange.solver.routing import routing_table
from melange.solver.solve import allocate, solve
from melange.solver.workload import Workload


@dataclass(frozen=True)
class Observed:
    """What the shell read for one service: its spec, generation and status, the objects it owns, and
    the time (seconds since the epoch)."""

    spec: Mapping[str, Any]
    generation: int | None
    status: Mapping[str, Any]
    actual: Sequence[Mapping[str, Any]]
    now_s: float

    @property
    def now(self) -> str:
        return iso(self.now_s)


@dataclass(frozen=True)
class LiveInput:
    """The live workload read for a service with `source: prometheus`: the workload when the metrics
    can be trusted, else None and why. `requests`: how many requests its rate was counted from (the
    rate's noise, operator/core/noise.py); None: not a count."""

    workload: Workload | None
    reason: str
    window: str | None = None
    requests: float | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """`desired` None means: change no object. `status` is the status patch (kopf merges it; None
    values delete fields). `decision` is what was decided this pass (None when none was taken)."""

    status: dict[str, Any]
    desired: list[dict[str, Any]] | None
    events: tuple[Event, ...] = field(default=())
    spec: ServiceSpec | None = None
    report: SolveReport | None = None
    decision: Decision | None = None


def _conditions(observed: Observed, updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return merge_conditions(observed.status.get("conditions") or [], updates)


def _refused(observed: Observed, kind: str, error: InputError, cleared: str) -> Outcome:
    """Status for a spec we cannot act on: the condition `kind` is True, nothing else changes."""
    gen, now, previous = observed.generation, observed.now, observed.status.get("conditions") or []
    reason = "InvalidSpec" if kind == "InvalidSpec" else "NoOptionServes"
    message = str(error)
    if kind == "Infeasible" and isinstance(error, InfeasibleError):
        message = f"no GPU option can serve buckets: {', '.join(error.buckets)}"
    updates = [condition(kind, True, reason, message, now, gen, previous),
               condition(cleared, False, "Resolved", "", now, gen, previous),
               condition("Solved", False, reason, message, now, gen, previous)]
    status = {"conditions": _conditions(observed, updates), "observedGeneration": gen}
    return Outcome(status, None, (Event("Warning", reason, message),))


def _metrics_unavailable(observed: Observed, live: LiveInput | None) -> Outcome:
    """Metrics missing, stale or too few: keep everything, say so. Unknown is never idle."""
    gen, now, previous = observed.generation, observed.now, observed.status.get("conditions") or []
    reason = live.reason if live is not None else "not read"
    updates = [condition("MetricsAvailable", False, "MetricsUnavailable", f"{reason}; keeping the last good "
                                                                          "allocation", now, gen, previous)]
    events = () if condition_status(observed.status, "MetricsAvailable") == "False" else (
        Event("Warning", "MetricsUnavailable", f"{reason}; keeping the last good allocation"),)
    return Outcome({"conditions": _conditions(observed, updates)}, None, events)


def ready_replicas(actual: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Ready replicas per option, from the pools' Deployments."""
    ready: dict[str, int] = {}
    for obj in actual:
        option = (obj.get("metadata", {}).get("labels") or {}).get(OPTION_LABEL)
        if obj.get("kind") == "Deployment" and option:
            ready[option] = int((obj.get("status") or {}).get("readyReplicas") or 0)
    return ready


def ready_condition(observed: Observed, desired: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Ready when every vLLM pool and the router have as many ready replicas as desired."""
    gen, now, previous = observed.generation, observed.now, observed.status.get("conditions") or []
    if desired is None:
        return condition("Ready", False, "NotApplied", "recommend mode or no plan: nothing deployed", now, gen,
                         previous)
    actual = {(o["kind"], o["metadata"]["name"]): o for o in observed.actual}
    waiting = []
    for obj in desired:
        if obj["kind"] != "Deployment":
            continue
        want = obj["spec"]["replicas"]
        have = actual.get(("Deployment", obj["metadata"]["name"]))
        ready = ((have or {}).get("status") or {}).get("readyReplicas") or 0
        if have is None or ready < want:
            waiting.append(f"{obj['metadata']['name']} {ready}/{want}")
    if waiting:
        return condition("Ready", False, "PoolsNotReady", "waiting for " + ", ".join(waiting), now, gen, previous)
    return condition("Ready", True, "PoolsReady", "every pool and the router are ready", now, gen, previous)


def split_for(problem: Problem, replicas: Mapping[str, int], settings: IlpSettings, mode: str) -> Allocation:
    """How to route the workload over exactly `replicas`: the ILP with each option fixed to its replicas
    (at the headroom, else at full load), else, when even that cannot serve it, shares in proportion
    to replicas (the router's fallback). Always this one solve, never the optimum's own split: the
    optimum's split is one of several equal ones and may differ from pass to pass, which would rewrite
    the routing table for nothing."""
    fixed = tuple(replace(o, min_replicas=replicas.get(o.name, 0), max_replicas=replicas.get(o.name, 0))
                  for o in problem.options)
    for attempt in (replace(settings, move_cost=0.0, current={}),
                    replace(settings, move_cost=0.0, current={}, target_utilisation=1.0)):
        try:
            allocation = allocate(Problem(problem.workload, fixed, problem.profiles), attempt, mode)
        except InfeasibleError:
            break
        if allocation.solved:
            return allocation
    uses = tuple(OptionUse(o.name, replicas.get(o.name, 0), replicas.get(o.name, 0) * o.gpus_per_replica,
                           replicas.get(o.name, 0) * o.replica_price, 0.0, 0.0, None) for o in problem.options)
    return Allocation(mode, "proportional", cost_of(problem, replicas), uses, (), None, "none", 0.0)


def _table(owner: Owner, problem: Problem, allocation: Allocation) -> dict[str, Any]:
    urls = {use.name: pool_url(owner, use.name) for use in allocation.options if use.replicas > 0}
    return routing_table(allocation, problem.workload.grid, urls)


def _current_table(observed: Observed, owner: Owner) -> dict[str, Any] | None:
    """The routing table now in the cluster (the old split, kept while new pools come up)."""
    for obj in observed.actual:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == routing_config_name(owner):
            try:
                return json.loads((obj.get("data") or {}).get(ROUTING_KEY, ""))
            except ValueError:
                return None
    return None


def reconcile(owner: Owner, observed: Observed, inputs: Inputs, images: Images = Images(),
              live: LiveInput | None = None, drain_s: float = DEFAULT_DRAIN_S) -> Outcome:
    """Solve, decide and move one service one step; see the module docstring."""
    try:
        spec = parse_spec(observed.spec)
    except InputError as error:
        return _refused(observed, "InvalidSpec", error, "Infeasible")
    prometheus = spec.workload.source == "prometheus"
    if prometheus and (live is None or live.workload is None):
        try:
            service_grid(spec, explicit_profiles(spec, inputs))
        except InputError as error:
            return _refused(observed, "InvalidSpec", error, "Infeasible")
        return _metrics_unavailable(observed, live)
    try:
        problem = build_problem(spec, live.workload if prometheus else None, inputs)
    except InfeasibleError as error:
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    except InputError as error:
        return _refused(observed, "InvalidSpec", error, "Infeasible")
    previous = observed.status
    # Options the spec no longer has are not part of the service: the planner renders none of them.
    offered = {o.name for o in problem.options}
    current = {k: int(v) for k, v in (previous.get("allocation") or {}).items() if k in offered} or None
    move = Move.from_status(previous.get("move"))
    if move is not None and any(name not in offered for name in {**move.source, **move.target}):
        move = None  # the spec dropped an option the move needs: decide again from what runs
    plain = solver_settings(spec)
    settings = solver_settings(spec, current or {}, move_cost(problem) if current else 0.0)
    demand = bounds(problem.workload, live.requests if prometheus else None)
    try:
        report = solve(replace(problem, workload=demand.sized), settings, mode=spec.routing_mode)
    except InfeasibleError as error:
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    if not report.allocation.solved:
        error = InputError("spec.gpuOptions", f"no allocation within the quotas ({report.allocation.status})",
                           "raise maxReplicas or add options")
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    events: list[Event] = []
    decision = None
    applied = current or {}
    last_change = from_iso(previous.get("lastChange"))
    if spec.mode == "recommend":
        move = None
        applied = dict(report.allocation.replicas)
        if applied != current:
            events.append(_reallocated("Recommended", current, previous.get("costPerHour"), applied, problem))
            last_change = observed.now_s
    elif move is None:
        # A spec edit is the user's request: it skips the savings threshold, the cooldown and the noise margins.
        edited = observed.generation != previous.get("observedGeneration")
        demand = demand.exact() if edited else demand
        low, high = replace(problem, workload=demand.low), replace(problem, workload=demand.high)
        decision = decide(current, report, problem, bool(current) and covers(low, current, plain, spec.routing_mode),
                          0.0 if edited else spec.reallocation.min_savings_percent,
                          0.0 if edited else spec.reallocation.cooldown_s,
                          None if last_change is None else observed.now_s - last_change, demand,
                          allocate(high, settings, spec.routing_mode) if demand.noisy and current else None)
        if decision.kind == "initial":
            applied = dict(decision.target)
            events.append(_reallocated("Reallocated", current, previous.get("costPerHour"), applied, problem))
            last_change = observed.now_s
        elif decision.moves:
            move = Move(dict(current or {}), dict(decision.target), "scaling-up", observed.now_s, decision.reason)
            events.append(Event("Normal", "MoveStarted", f"{describe_mix(move.source)} -> {describe_mix(move.target)}: "
                                                         f"{decision.reason}"))
    if move is not None:
        before = move.step
        move = advance(move, ready_replicas(observed.actual), observed.now_s, drain_s)
        if move is None:
            target = Move.from_status(previous.get("move")) or Move(applied, applied, "scaling-down", 0)
            events.append(_reallocated("Reallocated", applied, cost_of(problem, applied), dict(target.target),
                                       problem))
            applied = dict(target.target)
            last_change = observed.now_s
        elif move.step != before:
            events.append(Event("Normal", "MoveStep", f"{move.step}: {describe_mix(move.source)} -> "
                                                      f"{describe_mix(move.target)}"))
    desired = None
    if spec.mode == "apply":
        if move is not None:
            shape = stage(move)
            replicas = shape.replicas
            routed = move.source if shape.routing == "source" else move.target
            table = _current_table(observed, owner) if shape.routing == "source" else None
        else:
            replicas, routed, table = applied, applied, None
        if table is None:
            table = _table(owner, problem, split_for(problem, routed, plain, spec.routing_mode))
        profiles = {o.name: p for o, p in zip(problem.options, problem.profiles)}
        desired = plan(owner, spec, replicas, profiles, table, images)
    status = _status(observed, owner, spec, problem, report, applied, move, desired, live)
    status["lastChange"] = None if last_change is None else iso(last_change)
    if decision is not None:
        status["lastDecision"] = {"kind": decision.kind, "reason": decision.reason, "time": observed.now}
    return Outcome(status, desired, tuple(events), spec, report, decision)


def _reallocated(reason: str, old: Mapping[str, int] | None, old_cost: Any, new: Mapping[str, int],
                 problem: Problem) -> Event:
    before = "nothing" if not old or not any(old.values()) else f"{describe_mix(old)} (${float(old_cost or 0):.2f}/h)"
    return Event("Normal", reason, f"{before} -> {describe_mix(new)} (${cost_of(problem, new):.2f}/h)")


def _status(observed: Observed, owner: Owner, spec: ServiceSpec, problem: Problem, report: SolveReport,
            applied: Mapping[str, int], move: Move | None, desired: list[dict[str, Any]] | None,
            live: LiveInput | None) -> dict[str, Any]:
    cost = cost_of(problem, applied)
    best = report.best_single
    optimum = dict(report.allocation.replicas)
    other = report.other_mode
    status: dict[str, Any] = {
        "allocation": {o.name: int(applied.get(o.name, 0)) for o in problem.options},
        "costPerHour": round(cost, 4),
        "recommended": None if optimum == {o.name: applied.get(o.name, 0) for o in problem.options} else optimum,
        "recommendedCostPerHour": round(report.allocation.cost_per_hour, 4),
        "bestSingleType": None if best is None else {"name": best[0], "costPerHour": round(best[1], 4)},
        "savingsPercent": None if best is None or best[1] <= 0 else round(100.0 * (best[1] - cost) / best[1], 2),
        "otherModeCostPerHour": round(other.cost_per_hour, 4) if other is not None and other.solved else None,
        "workload": {"rate": round(problem.workload.rate, 6), "source": spec.workload.source},
        "move": None if move is None else move.to_status(),
        "observedGeneration": observed.generation,
        "routingConfigMap": routing_config_name(owner) if desired is not None else None,
    }
    if live is not None and live.window:
        status["workload"]["window"] = live.window
    notes = list(problem.workload.notes)
    if notes:
        status["workload"]["notes"] = notes[:5]
    gen, now, previous = observed.generation, observed.now, observed.status.get("conditions") or []
    updates = [condition("Solved", True, "Optimal" if report.allocation.status == "optimal" else "Feasible",
                         f"optimum {describe_mix(optimum)} at ${report.allocation.cost_per_hour:.2f}/h", now, gen,
                         previous),
               condition("Infeasible", False, "Feasible", "", now, gen, previous),
               condition("InvalidSpec", False, "Valid", "", now, gen, previous),
               ready_condition(observed, desired)]
    if spec.workload.source == "prometheus":
        updates.append(condition("MetricsAvailable", True, "MetricsRead", live.reason if live else "", now, gen,
                                 previous))
    status["conditions"] = _conditions(observed, updates)
    return status
