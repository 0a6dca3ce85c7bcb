"""One reconcile of one LLMService as a pure function: observed state in, desired objects, status and
Events out. The kopf handlers feed it what they read and apply what it returns.

Bad input changes nothing: an invalid spec or an infeasible SLO yields no desired objects (the
shell leaves every owned object as it is) and a status that says why; the last good allocation
stays in status.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange.operator.planner import OPTION_LABEL, Images, Owner, plan, pool_url
from melange.operator.problem import Inputs, build_problem, solver_settings
from melange.operator.spec import ServiceSpec, parse_spec
from melange.operator.status import condition, describe_mix, merge_conditions, solve_status
from melange.solver.allocation import SolveReport
from melange.solver.errors import InfeasibleError, InputError
from melange.solver.routing import routing_table
from melange.solver.solve import solve
from melange.solver.workload import Workload


@dataclass(frozen=True)
class Observed:
    """What the shell read for one service: its spec, generation and status, and the objects it owns."""

    spec: Mapping[str, Any]
    generation: int | None
    status: Mapping[str, Any]
    actual: Sequence[Mapping[str, Any]]
    now: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """`desired` None means: change no object. `status` is the whole status to write (kopf merges it)."""

    status: dict[str, Any]
    desired: list[dict[str, Any]] | None
    events: tuple[Event, ...] = field(default=())
    spec: ServiceSpec | None = None
    report: SolveReport | None = None


def _conditions(observed: Observed, updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return merge_conditions(observed.status.get("conditions") or [], updates)


def _refused(observed: Observed, kind: str, error: InputError, cleared: str) -> Outcome:
    """Status for a spec we cannot act on: the condition `kind` is True, nothing else changes."""
    gen, now, previous = observed.generation, observed.now, observed.status.get("conditions") or []
    reason = "InvalidSpec" if kind == "InvalidSpec" else "NoOptionServes"
    message = str(error)
    updates = [condition(kind, True, reason, message, now, gen, previous),
               condition(cleared, False, "Resolved", "", now, gen, previous),
               condition("Solved", False, reason, message, now, gen, previous)]
    if kind == "Infeasible" and isinstance(error, InfeasibleError):
        message = f"no GPU option can serve buckets: {', '.join(error.buckets)}"
        updates[0] = condition(kind, True, reason, message, now, gen, previous)
    status = {"conditions": _conditions(observed, updates), "observedGeneration": gen}
    return Outcome(status, None, (Event("Warning", reason, message),))


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


def reconcile(owner: Owner, observed: Observed, inputs: Inputs, images: Images = Images(),
              workload: Workload | None = None, workload_source: str = "static") -> Outcome:
    """Solve the service's spec and plan its objects; `workload` None means the spec's static one."""
    try:
        spec = parse_spec(observed.spec)
        problem = build_problem(spec, workload, inputs)
    except InfeasibleError as error:
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    except InputError as error:
        return _refused(observed, "InvalidSpec", error, "Infeasible")
    try:
        report = solve(problem, solver_settings(spec), mode=spec.routing_mode)
    except InfeasibleError as error:
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    if not report.allocation.solved:
        error = InputError("spec.gpuOptions", f"no allocation within the quotas ({report.allocation.status})",
                           "raise maxReplicas or add options")
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    allocation = report.allocation.replicas
    profiles = {o.name: p for o, p in zip(problem.options, problem.profiles)}
    urls = {name: pool_url(owner, name) for name, count in allocation.items() if count > 0}
    table = routing_table(report.allocation, problem.workload.grid, urls)
    desired = None if spec.mode == "recommend" else plan(owner, spec, allocation, profiles, table, images)
    window = spec.workload.prometheus.window if workload_source == "prometheus" and spec.workload.prometheus else None
    status = solve_status(report, workload_source, window)
    gen, now, previous = observed.generation, observed.now, observed.status.get("conditions") or []
    status["conditions"] = _conditions(observed, [
        condition("Solved", True, "Optimal" if report.allocation.status == "optimal" else "Feasible",
                  f"{describe_mix(allocation)} at ${report.allocation.cost_per_hour:.2f}/h", now, gen, previous),
        condition("Infeasible", False, "Feasible", "", now, gen, previous),
        condition("InvalidSpec", False, "Valid", "", now, gen, previous),
        ready_condition(observed, desired)])
    status["observedGeneration"] = gen
    if desired is not None:
        status["routingConfigMap"] = f"{owner.name}-routing"
    events = []
    old = observed.status.get("allocation")
    if old != allocation:
        old_cost = observed.status.get("costPerHour")
        before = "nothing" if not old else f"{describe_mix(old)} (${old_cost or 0:.2f}/h)"
        verb = "Recommended" if spec.mode == "recommend" else "Reallocated"
        events.append(Event("Normal", verb, f"{before} -> {describe_mix(allocation)} "
                                            f"(${report.allocation.cost_per_hour:.2f}/h)"))
    return Outcome(status, desired, tuple(events), spec, report)


def owned_options(actual: Sequence[Mapping[str, Any]]) -> set[str]:
    """Options that have a Deployment now."""
    return {(o["metadata"].get("labels") or {}).get(OPTION_LABEL) for o in actual if o["kind"] == "Deployment"} - {None}
