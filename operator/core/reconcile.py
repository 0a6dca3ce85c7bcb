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

from melange.operator.core.corrections import Correction, PoolObservation, announce, update
from melange.operator.core.decision import Decision, cost_of, covers, decide, fit, move_cost
from melange.operator.core.moves import (DEFAULT_DRAIN_S, FALLBACK_GRACE_S, Drain, Move, advance, drain_waits,
                                         next_wake_s, peak, removed, stage)
from melange.operator.core.noise import bounds, surge_floor
from melange.operator.core.planner import (OPTION_LABEL, Images, Owner, plan, pool_url,
                                           router_acks_name, routing_config_name, table_version)
from melange.operator.core.problem import Inputs, build_problem, explicit_profiles, service_grid, solver_settings
from melange.operator.core.spec import ServiceSpec, parse_spec
from melange.operator.core.status import condition, condition_status, describe_mix, from_iso, iso, merge_conditions
from melange.solver.allocation import Allocation, OptionUse, SolveReport
from melange.solver.errors import InfeasibleError, InputError
from melange.solver.ilp import IlpSettings
from melange.solver.problem import Problem
from melange.solver.profiles import scale_profile
from melange.solver.routing import IN_FLIGHT_SUFFIX, TABLE_KEY, routing_table
from melange.solver.solve import allocate, other_mode, solve
from melange.solver.workload import Workload


@dataclass(frozen=True)
class Observed:
    """What the shell read for one service: its spec, generation and status, the objects it owns, the
    time (seconds since the epoch), while pools are not ready what their pods say, and while a move
    switches tables or drains the old pools the ready router pods (their acknowledgements and requests
    in flight are in the acknowledgement ConfigMap, among the owned objects)."""

    spec: Mapping[str, Any]
    generation: int | None
    status: Mapping[str, Any]
    actual: Sequence[Mapping[str, Any]]
    now_s: float
    pod_problems: Mapping[str, str] = field(default_factory=dict)  # option -> why its pods are not ready
    routers: Sequence[str] | None = None  # ready router pods while a move switches or drains (None: not read)

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
    # Per pool (option name) over the same window: what the capacity corrections learn from
    # (operator/core/corrections.py). Empty: not read; every option's correction then decays.
    pools: Mapping[str, PoolObservation] = field(default_factory=dict)
    # Whether the workload's size mix was read from enough requests (the mix a later window with too
    # few may use: operator/live_workload.py).
    mix_trusted: bool = False
    # The same read over the shorter `scaleUpWindow` (None: not read): growth it shows beyond what runs
    # scales the service up before the window's mean catches up (operator/core/noise.py, `surge_floor`).
    recent: LiveInput | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """`desired` None means: change no object. `status` is the service's status after this pass (the
    shell writes it so that fields it drops are deleted). `decision` is what was decided this pass (None
    when none was taken)."""

    status: dict[str, Any]
    desired: list[dict[str, Any]] | None
    events: tuple[Event, ...] = field(default=())
    spec: ServiceSpec | None = None
    report: SolveReport | None = None
    decision: Decision | None = None
    wake_s: float | None = None  # when a move needs its next pass, if no change of its pools comes first
    problem: Problem | None = None  # what was solved (`melange plan` prints it as `melange solve` does)


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


def _surges(problem: Problem, live: LiveInput, current: Mapping[str, int], plain: IlpSettings,
            spec: ServiceSpec) -> bool:
    """Whether the scale-up window shows more traffic than what runs serves, beyond its noise."""
    recent = live.recent
    if recent is None or recent.workload is None or recent.workload.grid != problem.workload.grid:
        return False
    floor = surge_floor(recent.workload, recent.requests)
    return not covers(replace(problem, workload=floor), current, plain, spec.routing_mode)


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
            option = (obj["metadata"].get("labels") or {}).get(OPTION_LABEL)
            why = observed.pod_problems.get(option) if option else None
            waiting.append(f"{obj['metadata']['name']} {ready}/{want}" + (f" ({why})" if why else ""))
    if waiting:
        return condition("Ready", False, "PoolsNotReady", "waiting for " + ", ".join(waiting), now, gen, previous)
    return condition("Ready", True, "PoolsReady", "every pool and the router are ready", now, gen, previous)


def _other_mode_due(previous: Mapping[str, Any], edited: bool, report: SolveReport) -> bool:
    """Whether to solve the other routing mode (for `status.otherModeCostPerHour`, the price of
    routability): on the first pass, after a spec edit and when the optimum changed, not on every pass
    (an ILP that decides nothing); in between the status keeps the figure of the last optimum."""
    last_optimum = previous.get("recommended") or previous.get("allocation")
    return edited or "otherModeCostPerHour" not in previous or last_optimum != dict(report.allocation.replicas)


class _Fits:
    """What a set of replicas can serve of this pass's workload (the point estimate), solved once per set."""

    def __init__(self, problem: Problem, settings: IlpSettings, mode: str) -> None:
        self.problem, self.settings, self.mode = problem, settings, mode
        self._found: dict[tuple[tuple[str, int], ...], Allocation | None] = {}

    def at_headroom(self, replicas: Mapping[str, int]) -> Allocation | None:
        """How to route the workload over exactly `replicas` within its SLO and headroom (None: they cannot)."""
        key = tuple(sorted((name, int(n)) for name, n in replicas.items() if n))
        if key not in self._found:
            self._found[key] = fit(self.problem, replicas, self.settings, self.mode)
        return self._found[key]

    def serves(self, replicas: Mapping[str, int]) -> bool:
        """Whether `replicas` serve the workload within its SLO and headroom."""
        return self.at_headroom(replicas) is not None

    def serves_lower(self, replicas: Mapping[str, int], lower: Problem) -> bool:
        """Whether `replicas` serve `lower`, this workload at a rate no higher (the same routing carries a
        lower rate of the same mix, so one solve answers both when they serve the workload itself)."""
        return self.serves(replicas) or covers(lower, replicas, self.settings, self.mode)

    def split(self, replicas: Mapping[str, int]) -> Allocation:
        """How to route the workload over exactly `replicas`, for the routing table: at the headroom, else
        at full load, else, when even that cannot serve it, shares in proportion to replicas (the
        router's fallback). Always this solve, never the optimum's own split: the optimum's split is one
        of several equal ones and may differ from pass to pass, which would rewrite the table for nothing."""
        found = self.at_headroom(replicas) or fit(self.problem, replicas,
                                                  replace(self.settings, target_utilisation=1.0), self.mode)
        if found is not None:
            return found
        problem = self.problem
        uses = tuple(OptionUse(o.name, replicas.get(o.name, 0), replicas.get(o.name, 0) * o.gpus_per_replica,
                               o.cost(replicas.get(o.name, 0)), 0.0, 0.0, None, o.nodes(replicas.get(o.name, 0)))
                     for o in problem.options)
        return Allocation(self.mode, "proportional", cost_of(problem, replicas), uses, (), None, "none", 0.0)


def _table(owner: Owner, problem: Problem, allocation: Allocation) -> dict[str, Any]:
    urls = {use.name: pool_url(owner, use.name) for use in allocation.options if use.replicas > 0}
    table = routing_table(allocation, problem.workload.grid, urls)
    return {**table, "version": table_version(table)}


def _current_table(observed: Observed, owner: Owner, source: Mapping[str, int]) -> dict[str, Any] | None:
    """The routing table now in the cluster (the old split, kept while new pools come up), when it
    names only pools that `source` runs (after a re-planned or timed-out move it may not)."""
    for obj in observed.actual:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == routing_config_name(owner):
            try:
                table = json.loads((obj.get("data") or {}).get(TABLE_KEY, ""))
            except ValueError:
                return None
            pools = table.get("pools") if isinstance(table, dict) else None
            running = {name for name, count in source.items() if count > 0}
            return table if isinstance(pools, dict) and pools and set(pools) <= running else None
    return None


def reconcile(owner: Owner, observed: Observed, inputs: Inputs, images: Images = Images(),
              live: LiveInput | None = None, drain_s: float | None = DEFAULT_DRAIN_S) -> Outcome:
    """Solve, decide and move one service one step; see the module docstring. `drain_s`: the longest a
    drain waits for requests in flight on the old pools (None: their termination grace)."""
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
    corrections, correction_events = _corrections(spec, problem, observed, live)
    if corrections:
        problem = replace(problem, profiles=tuple(
            scale_profile(p, corrections[o.name].factor) for o, p in zip(problem.options, problem.profiles)))
    # Options the spec no longer has are not part of the service: the planner renders none of them.
    offered = {o.name for o in problem.options}
    current = {k: int(v) for k, v in (previous.get("allocation") or {}).items() if k in offered} or None
    move = Move.from_status(previous.get("move"))
    edited = observed.generation != previous.get("observedGeneration")
    failure = _failure(previous, edited)
    events: list[Event] = list(correction_events)
    decision = None
    last_change = from_iso(previous.get("lastChange"))
    timeout_s = spec.reallocation.move_timeout_s
    if move is not None and spec.mode == "apply" and (edited or any(name not in offered for name in peak(move))):
        # The user's edit (or the spec dropped an option the move needs): decide again from what runs.
        running = _what_runs(move, observed.actual, offered)
        events.append(Event("Normal", "MoveReplanned", f"the spec changed during the move {describe_mix(move.source)}"
                                                       f" -> {describe_mix(move.target)} ({move.step}): deciding "
                                                       f"again from what runs, {describe_mix(running)}"))
        current, move = running or None, None
    elif move is not None and move.step == "scaling-up" and observed.now_s - move.began_s >= timeout_s:
        running = _what_runs(move, observed.actual, offered)
        failure = _timed_out(move, observed, running, timeout_s)
        events.append(Event("Warning", "MoveTimedOut", failure["message"]))
        current, move, last_change = running or None, None, observed.now_s
    plain = solver_settings(spec)
    settings = solver_settings(spec, current or {}, move_cost(problem) if current else 0.0)
    surging = (prometheus and spec.mode == "apply" and current and move is None and not edited
               and _surges(problem, live, current, plain, spec))
    if surging:
        # What runs cannot serve the scale-up window's traffic even at its lower bound: this pass decides on
        # that window (its rate, its mix, its count), as a scale-up (rule 2) sized for it.
        live = live.recent
        problem = replace(problem, workload=live.workload)
    demand = bounds(problem.workload, live.requests if prometheus else None)
    sized = replace(problem, workload=demand.sized)
    try:
        report = solve(sized, settings, mode=spec.routing_mode, compare_modes=False)
    except InfeasibleError as error:
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    if not report.allocation.solved:
        error = InputError("spec.gpuOptions", f"no allocation within the quotas ({report.allocation.status})",
                           "raise maxReplicas or add options")
        return _refused(observed, "Infeasible", error, "InvalidSpec")
    if _other_mode_due(previous, edited, report):
        report = replace(report, other_mode=allocate(sized, settings, other_mode(spec.routing_mode)))
    fits = _Fits(problem, plain, spec.routing_mode)
    applied = current or {}
    if spec.mode == "recommend":
        move = None
        applied = dict(report.allocation.replicas)
        if applied != current:
            events.append(_reallocated("Recommended", current, previous.get("costPerHour"), applied, problem))
            last_change = observed.now_s
    elif move is None:
        # A spec edit is the user's request: it skips the savings threshold, the cooldown and the noise margins.
        demand = demand.exact() if edited else demand
        low, high = replace(problem, workload=demand.low), replace(problem, workload=demand.high)
        decision = decide(current, report, problem, bool(current) and fits.serves_lower(current, low),
                          0.0 if edited else spec.reallocation.min_savings_percent,
                          0.0 if edited else spec.reallocation.cooldown_s,
                          None if last_change is None else observed.now_s - last_change, demand,
                          (lambda: allocate(high, settings, spec.routing_mode)) if demand.noisy and current else None)
        decision = _after_failure(decision, current, failure, observed.now_s, spec.reallocation.cooldown_s)
        if surging and decision.moves:
            decision = replace(decision, reason=f"over the last {live.window}: {decision.reason}")
        if decision.kind == "initial":
            applied = dict(decision.target)
            events.append(_reallocated("Reallocated", current, previous.get("costPerHour"), applied, problem))
            last_change = observed.now_s
        elif decision.moves:
            move = Move(dict(current or {}), dict(decision.target), "scaling-up", observed.now_s, decision.reason,
                        observed.now_s)
            events.append(Event("Normal", "MoveStarted", f"{describe_mix(move.source)} -> {describe_mix(move.target)}: "
                                                         f"{decision.reason}"))
    waiting_for = None
    drain = None
    if move is not None:
        before = move.step
        version = None
        if move.step in ("switching", "draining") and spec.mode == "apply":
            version = _table(owner, problem, fits.split(move.target))["version"]
        if move.step == "switching" and version is not None:
            waiting_for = unacknowledged(observed, owner, version)
        elif move.step == "draining" and version is not None:
            drain = _drain(observed, owner, move, version, drain_s)
            waiting_for = drain_waits(move, drain, observed.now_s)
        drain_began = move
        move = advance(move, ready_replicas(observed.actual), observed.now_s, drain, switched=not waiting_for)
        if move is not None and move.step == "draining" and drain is None and spec.mode == "apply":
            # Just switched: routers report their requests in flight with their acknowledgement, so status
            # says at once what the drain waits for (the next pass, at once, may end it).
            drain = _drain(observed, owner, move, version or "", drain_s)
            waiting_for = drain_waits(move, drain, observed.now_s)
        if move is None:
            target = Move.from_status(previous.get("move")) or Move(applied, applied, "scaling-down", 0)
            events.append(_reallocated("Reallocated", applied, cost_of(problem, applied), dict(target.target),
                                       problem))
            applied = dict(target.target)
            last_change = observed.now_s
            failure = None
        elif move.step != before:
            why = ""
            if before == "draining" and drain is not None:
                why = (f" (the drain's bound of {drain.bound_s:g} s passed)" if observed.now_s - drain_began.since_s
                       >= drain.bound_s else " (no request in flight to the pools it removes)")
            events.append(Event("Normal", "MoveStep", f"{move.step}: {describe_mix(move.source)} -> "
                                                      f"{describe_mix(move.target)}{why}"))
    desired = None
    if spec.mode == "apply":
        if move is not None:
            shape = stage(move)
            replicas = shape.replicas
            routed = move.source if shape.routing == "source" else move.target
            table = _current_table(observed, owner, move.source) if shape.routing == "source" else None
        else:
            replicas, routed, table = applied, applied, None
        if table is None:
            table = _table(owner, problem, fits.split(routed))
        profiles = {o.name: p for o, p in zip(problem.options, problem.profiles)}
        desired = plan(owner, spec, replicas, profiles, table, images, inputs.catalog,
                       {o.name: o.gpus_per_node for o in problem.options}, inputs.monitoring)
    status = _status(observed, owner, spec, problem, report, applied, move, desired, live, failure, fits, waiting_for)
    pools = node_pool_names(observed.actual, desired)
    if pools or observed.status.get("nodePools"):
        status["nodePools"] = pools or None
    status["profileCorrections"] = ({name: c.to_status() for name, c in corrections.items()} if corrections
                                    else None)
    status["lastChange"] = None if last_change is None else iso(last_change)
    status["lastMoveFailure"] = failure
    if decision is not None:
        status["lastDecision"] = {"kind": decision.kind, "reason": decision.reason, "time": observed.now}
    wake = None if move is None or spec.mode != "apply" else next_wake_s(move, drain, timeout_s, observed.now_s)
    return Outcome(status, desired, tuple(events), spec, report, decision, wake, problem)


def _corrections(spec: ServiceSpec, problem: Problem, observed: Observed, live: LiveInput | None
                 ) -> tuple[dict[str, Correction], list[Event]]:
    """Each option's capacity correction after this pass's window (operator/core/corrections.py), from
    the state in status; none for a static workload or with `profileCorrection.enabled` false. A pool
    observation without replicas counts the pool's ready replicas now."""
    settings = spec.profile_correction
    if not settings.enabled or spec.workload.source != "prometheus" or live is None:
        return {}, []
    stored = observed.status.get("profileCorrections") or {}
    ready = ready_replicas(observed.actual)
    states: dict[str, Correction] = {}
    events: list[Event] = []
    for option, profile in zip(problem.options, problem.profiles):
        before = Correction.from_status(stored.get(option.name) if isinstance(stored, Mapping) else None)
        seen = live.pools.get(option.name)
        if seen is not None and not seen.replicas:
            seen = replace(seen, replicas=float(ready.get(option.name, 0))) if ready.get(option.name) else None
        state = update(before, seen, profile.max_rps, spec.slo, settings, observed.now_s)
        state, due = announce(state)
        if due:
            events.append(Event("Normal" if state.factor >= before.announced else "Warning", "ProfileCorrected",
                                f"{option.name}: capacity factor {before.announced:.2f} -> {state.factor:.2f} "
                                f"({state.reason})"))
        states[option.name] = state
    return states, events


def unacknowledged(observed: Observed, owner: Owner, version: str) -> str | None:
    """Which ready router pods do not serve the table `version` yet, in a line; None when all do (or the
    shell does not follow routers)."""
    if observed.routers is None:
        return None
    acks: Mapping[str, str] = {}
    for obj in observed.actual:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == router_acks_name(owner):
            acks = obj.get("data") or {}
    behind = [f"{pod} serves {acks[pod]}" if pod in acks else f"{pod} has acknowledged none"
              for pod in observed.routers if acks.get(pod) != version]
    if not behind:
        return None
    return f"waiting for router pods to serve routing table {version}: {', '.join(behind)}"


def in_flight_reports(observed: Observed, owner: Owner, version: str
                       ) -> dict[str, dict[str, int] | None] | None:
    """Per ready router pod, its requests in flight to each pool as it reported them for the table
    `version` (`<pod>.in-flight` in the acknowledgement ConfigMap); None for a pod with no such report
    (none written, or one for another table); None in all when the shell does not follow routers."""
    if observed.routers is None:
        return None
    data: Mapping[str, Any] = {}
    for obj in observed.actual:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == router_acks_name(owner):
            data = obj.get("data") or {}
    reports: dict[str, dict[str, int] | None] = {}
    for pod in observed.routers:
        try:
            report = json.loads(data.get(pod + IN_FLIGHT_SUFFIX) or "null")
            pools = report.get("pools") if isinstance(report, dict) and report.get("version") == version else None
            reports[pod] = None if not isinstance(pools, dict) else {str(k): int(v) for k, v in pools.items()}
        except (ValueError, TypeError, AttributeError):
            reports[pod] = None
    return reports


def termination_grace_s(actual: Sequence[Mapping[str, Any]], pools: Sequence[str]) -> float:
    """The longest terminationGracePeriodSeconds of these pools' Deployments (Kubernetes' default, 30 s,
    where none says)."""
    graces = [float(((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get(
                  "terminationGracePeriodSeconds") or FALLBACK_GRACE_S)
              for obj in actual if obj.get("kind") == "Deployment"
              and (obj.get("metadata", {}).get("labels") or {}).get(OPTION_LABEL) in pools]
    return max(graces, default=FALLBACK_GRACE_S)


def _drain(observed: Observed, owner: Owner, move: Move, version: str, drain_s: float | None) -> Drain:
    """What a draining move waits on: the routers' reports, within the bound (`drain_s`, else the
    removed pools' termination grace)."""
    bound = drain_s if drain_s is not None else termination_grace_s(observed.actual, removed(move))
    return Drain(in_flight_reports(observed, owner, version), bound)


def node_pool_names(actual: Sequence[Mapping[str, Any]], desired: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The NodePools the service has or is given this pass, by name: status keeps them so that the shell
    still lists (and so deletes) them after `nodePools.provider` changed away from karpenter."""
    return sorted({o["metadata"]["name"] for o in [*actual, *(desired or [])] if o.get("kind") == "NodePool"})


def _what_runs(move: Move, actual: Sequence[Mapping[str, Any]], offered: set[str]) -> dict[str, int]:
    """What a move leaves serving when it stops early: before the switch, the ready replicas (at most the
    move's peak); after it, the target, which is ready and routed already."""
    if move.step != "scaling-up":
        return {name: count for name, count in move.target.items() if name in offered and count > 0}
    ready = ready_replicas(actual)
    return {name: min(ready.get(name, 0), count) for name, count in peak(move).items()
            if name in offered and min(ready.get(name, 0), count) > 0}


def _timed_out(move: Move, observed: Observed, running: Mapping[str, int], timeout_s: float) -> dict[str, Any]:
    """The record of a move whose pools did not all become ready by its deadline: which, and why."""
    ready = ready_replicas(observed.actual)
    pools = {name: f"{ready.get(name, 0)}/{count} ready" + (f": {observed.pod_problems[name]}"
                                                           if name in observed.pod_problems else "")
             for name, count in peak(move).items() if count > 0 and ready.get(name, 0) < count}
    lines = "; ".join(f"{name} {why}" for name, why in pools.items())
    message = (f"the move to {describe_mix(move.target)} did not become ready in {timeout_s / 60:g}m ({lines}); "
               f"serving with what is ready, {describe_mix(running)}")
    return {"to": dict(move.target), "time": observed.now, "pools": pools, "message": message}


def _failure(status: Mapping[str, Any], edited: bool) -> dict[str, Any] | None:
    """The last timed-out move, kept until a move completes or the user edits the spec."""
    failure = status.get("lastMoveFailure")
    return dict(failure) if isinstance(failure, Mapping) and not edited else None


def _after_failure(decision: Decision, current: Mapping[str, int] | None, failure: Mapping[str, Any] | None,
                   now_s: float, cooldown_s: float) -> Decision:
    """A move to the mix that just timed out waits for the cooldown before it is tried again: the same
    pools would most likely not become ready now either."""
    if not decision.moves or failure is None or dict(decision.target) != {
            k: int(v) for k, v in (failure.get("to") or {}).items()}:
        return decision
    since = now_s - (from_iso(failure.get("time")) or now_s)
    if since >= cooldown_s:
        return decision
    return Decision("keep", dict(current or {}), f"kept: the move to {describe_mix(decision.target)} timed out "
                                                   f"{since / 60:.0f}m ago; it is tried again after the cooldown "
                                                   f"({cooldown_s / 60:g}m)")


def _reallocated(reason: str, old: Mapping[str, int] | None, old_cost: Any, new: Mapping[str, int],
                 problem: Problem) -> Event:
    before = "nothing" if not old or not any(old.values()) else f"{describe_mix(old)} (${float(old_cost or 0):.2f}/h)"
    return Event("Normal", reason, f"{before} -> {describe_mix(new)} (${cost_of(problem, new):.2f}/h)")


def _savings(best: tuple[str, float] | None, cost: float) -> float | None:
    return None if best is None or best[1] <= 0 else round(100.0 * (best[1] - cost) / best[1], 2)


def _status(observed: Observed, owner: Owner, spec: ServiceSpec, problem: Problem, report: SolveReport,
            applied: Mapping[str, int], move: Move | None, desired: list[dict[str, Any]] | None,
            live: LiveInput | None, failure: Mapping[str, Any] | None, fits: _Fits, waiting_for: str | None = None
            ) -> dict[str, Any]:
    cost = cost_of(problem, applied)
    best = report.best_single
    optimum = dict(report.allocation.replicas)
    other = report.other_mode
    # A saving is against the best single type for the same demand: a mix that cannot serve the demand
    # (what runs before a scale-up completes) saves nothing, it falls short.
    serves = any(applied.values()) and fits.serves(applied)
    status: dict[str, Any] = {
        "allocation": {o.name: int(applied.get(o.name, 0)) for o in problem.options},
        "costPerHour": round(cost, 4),
        "recommended": None if optimum == {o.name: applied.get(o.name, 0) for o in problem.options} else optimum,
        "recommendedCostPerHour": round(report.allocation.cost_per_hour, 4),
        "bestSingleType": None if best is None else {"name": best[0], "costPerHour": round(best[1], 4)},
        "savingsPercent": _savings(best, cost) if serves else None,
        "otherModeCostPerHour": (observed.status.get("otherModeCostPerHour") if other is None
                                 else round(other.cost_per_hour, 4) if other.solved else None),
        "workload": {"rate": round(problem.workload.rate, 6), "source": spec.workload.source},
        "move": None,
        "observedGeneration": observed.generation,
        "routingConfigMap": routing_config_name(owner) if desired is not None else None,
    }
    if move is not None:
        target_cost = cost_of(problem, move.target)
        status["move"] = {**move.to_status(),
                          "fromCostPerHour": round(cost_of(problem, move.source), 4),
                          "fromSavingsPercent": status["savingsPercent"],
                          "toCostPerHour": round(target_cost, 4),
                          "toSavingsPercent": _savings(best, target_cost)}
    if live is not None and live.window:
        status["workload"]["window"] = live.window
    notes = list(problem.workload.notes)
    if notes:
        status["workload"]["notes"] = notes[:5]
    gen, now, previous = observed.generation, observed.now, observed.status.get("conditions") or []
    if move is not None:
        message = f"{move.step}: {describe_mix(move.source)} -> {describe_mix(move.target)}"
        if waiting_for and move.step in ("switching", "draining"):
            message += f"; {waiting_for}"
        progressing = condition("Progressing", True, "Moving", message, now, gen, previous)
    elif failure is not None:
        progressing = condition("Progressing", False, "MoveTimedOut", str(failure.get("message", "")), now, gen,
                                previous)
    else:
        progressing = condition("Progressing", False, "Stable", f"serving {describe_mix(applied)}", now, gen,
                                previous)
    updates = [condition("Solved", True, "Optimal" if report.allocation.status == "optimal" else "Feasible",
                         f"optimum {describe_mix(optimum)} at ${report.allocation.cost_per_hour:.2f}/h", now, gen,
                         previous),
               condition("Infeasible", False, "Feasible", "", now, gen, previous),
               condition("InvalidSpec", False, "Valid", "", now, gen, previous),
               ready_condition(observed, desired), progressing]
    if spec.workload.source == "prometheus":
        updates.append(condition("MetricsAvailable", True, "MetricsRead", live.reason if live else "", now, gen,
                                 previous))
    status["conditions"] = _conditions(observed, updates)
    return status
