"""The operator's first pass over a new LLMService, off the cluster: what `melange plan` shows.

    manifest -> admission (the CRD's schema, defaults and CEL rules, as the API server does)
             -> the operator's own reconcile of a new service (its spec reader, its problem, its solve,
                its decision, its planner), with no status, no owned objects and the ConfigMaps given
             -> the allocation, the status it would write and every object it would apply

Nothing here is a second implementation: a refused spec is refused by `reconcile` itself and its
message is the one the operator writes into the `InvalidSpec`/`Infeasible` condition. What stands
in for the cluster: the ConfigMaps (passed in), the live rate of a `source: prometheus` service
(`rate`, with the size mix of `spec.workload.static`), and the LLMService's uid (a placeholder;
owner references name the real one only once the API server has created the service).

Pure: the CRD, the manifest and the ConfigMap data come in as data.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from melange.operator.core.admission import admission_errors
from melange.operator.core.planner import GROUP, VERSION, Images, Owner
from melange.operator.core.problem import Inputs, explicit_profiles, service_grid, static_workload
from melange.operator.core.reconcile import LiveInput, Observed, Outcome, reconcile
from melange.operator.core.spec import ServiceSpec, parse_spec
from melange.solver.errors import InputError

KIND = "LLMService"
API_VERSION = f"{GROUP}/{VERSION}"
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
DEFAULT_NAMESPACE = "default"  # kubectl's, for a manifest that names none
RATE_SOURCE = "given by --rate"


@dataclass(frozen=True)
class DryRun:
    """A new service's first pass: `stored` is the manifest as the API server would store it (defaults
    filled in); `outcome.status` the status the operator would write, `outcome.desired` the objects
    it would apply (None in recommend mode), `outcome.report` and `outcome.problem` its solve."""

    owner: Owner
    stored: Mapping[str, Any]
    spec: ServiceSpec
    outcome: Outcome


def refusal(outcome: Outcome) -> str | None:
    """The message of the condition by which the operator refuses a spec (`InvalidSpec`, `Infeasible`),
    or None when it took it."""
    for condition in outcome.status.get("conditions") or []:
        if condition.get("type") in ("InvalidSpec", "Infeasible") and condition.get("status") == "True":
            return str(condition.get("message", ""))
    return None


def admitted(manifest: Any, source: str, crd: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest as the API server would store it; InputError(`source`, its first refusal in the
    server's words) when the server would refuse it."""
    if not isinstance(manifest, Mapping) or manifest.get("kind") != KIND or manifest.get("apiVersion") != API_VERSION:
        got = (f"apiVersion {manifest.get('apiVersion')!r}, kind {manifest.get('kind')!r}"
               if isinstance(manifest, Mapping) else f"a {type(manifest).__name__}")
        raise InputError(source, f"not an LLMService manifest ({got})", f"apiVersion {API_VERSION}, kind {KIND}")
    errors, stored = admission_errors(manifest, crd)
    if errors:
        raise InputError(source, errors[0])
    return dict(stored)


def _with_static_rate(spec: Mapping[str, Any], rate: float) -> dict[str, Any]:
    changed = copy.deepcopy(dict(spec))
    changed["workload"]["static"]["rate"] = rate
    return changed


def _live_input(parsed: ServiceSpec, inputs: Inputs, source: str, rate: float | None) -> LiveInput | None:
    """The stand-in for the Prometheus reading of a live service: `rate` with the size mix of
    `spec.workload.static`. None when the spec itself is wrong (the reconcile reports it)."""
    if rate is None:
        raise InputError(source, "spec.workload.source: prometheus: the operator reads this service's rate from "
                                 "Prometheus, which melange plan does not query",
                         "--rate R, the req/s to plan for; the size mix then comes from spec.workload.static")
    static = parsed.workload.static
    if static is None:
        raise InputError(source, "spec.workload.static: missing, and source prometheus measures the size mix live, "
                                 "which melange plan cannot",
                         "spec.workload.static {rate, distribution | traceConfigMapRef} as the mix to plan for; "
                         "the operator ignores it while source is prometheus")
    try:
        grid = service_grid(parsed, explicit_profiles(parsed, inputs))
    except InputError:
        return None
    mixed = replace(parsed, workload=replace(parsed.workload, static=replace(static, rate=rate)))
    try:
        workload = static_workload(mixed, inputs, grid)
    except InputError as error:
        raise InputError(source, str(error)) from None
    return LiveInput(workload.with_rate(rate, RATE_SOURCE), f"{RATE_SOURCE} to melange plan")


def first_pass(manifest: Any, source: str, crd: Mapping[str, Any], inputs: Inputs, images: Images = Images(),
               rate: float | None = None, now_s: float = 0.0) -> DryRun:
    """What the operator does on its first pass over `manifest` (read from `source`, named in errors)
    with the ConfigMaps of `inputs`; `rate` (req/s) replaces the static rate or stands in for
    Prometheus. InputError (naming `source`) when the API server or the operator would refuse it:
    the server's first message, or the operator's `InvalidSpec`/`Infeasible` condition message."""
    stored = admitted(manifest, source, crd)
    metadata = stored.get("metadata") or {}
    owner = Owner(metadata["name"], metadata.get("namespace") or DEFAULT_NAMESPACE, PLACEHOLDER_UID)
    spec = stored["spec"]
    try:
        parsed: ServiceSpec | None = parse_spec(spec)
    except InputError:
        parsed = None  # the reconcile refuses it, in the operator's words
    live = None
    if parsed is not None and parsed.workload.source == "prometheus":
        live = _live_input(parsed, inputs, source, rate)
    elif parsed is not None and rate is not None:
        spec = _with_static_rate(spec, rate)
    outcome = reconcile(owner, Observed(spec, metadata.get("generation", 1), {}, [], now_s), inputs, images, live)
    refused = refusal(outcome)
    if refused is not None or outcome.report is None or outcome.spec is None:
        raise InputError(source, refused or "the operator took no decision")
    if rate is not None and parsed is not None and parsed.workload.source == "static":
        outcome = replace(outcome, report=replace(outcome.report, rate_source=RATE_SOURCE))
    return DryRun(owner, stored, outcome.spec, outcome)
