"""The LLMService spec, read into frozen dataclasses with errors that name the field.

The CRD's OpenAPI schema rejects what it can at admission; this reader checks again (an operator
may run against objects written before a schema change, or under a server that skips CEL) and
adds what a schema cannot know, so a bad spec is reported in status and changes nothing.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from melange.solver.buckets import BucketGrid, grid_from_dict
from melange.solver.checks import integer, number, require_keys, require_mapping, sequence, text
from melange.solver.errors import InputError
from melange.operator.core.corrections import CorrectionSettings
from melange.solver.metrics.prometheus_source import parse_duration
from melange.solver.options import check_node_shape
from melange.solver.profiles import Slo, slo_from_dict

DNS_LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")
MODES = ("apply", "recommend")
ROUTING_MODES = ("routable", "paper")
WORKLOAD_SOURCES = ("static", "prometheus")
NODE_POOL_PROVIDERS = ("none", "karpenter")
PRICINGS = ("gpu", "node")
# Karpenter v1's NodePool schema (karpenter.sh_nodepools.yaml): durations, budget sizes and reasons.
KARPENTER_DURATION = re.compile(r"^(([0-9]+(s|m|h))+|Never)$")
KARPENTER_BUDGET_NODES = re.compile(r"^((100|[0-9]{1,2})%|[0-9]+)$")
KARPENTER_BUDGET_DURATION = re.compile(r"^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$")
KARPENTER_REASONS = ("Underutilized", "Empty", "Drifted")
DEFAULT_TARGET_UTILISATION = 0.85  # 15% headroom: estimated profiles err by 10-15% (docs/cli.md, calibration)


@dataclass(frozen=True)
class KeyRef:
    """A key of a ConfigMap or Secret in the service's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class GpuOptionSpec:
    """One `spec.gpuOptions[]` entry. `profile_inline`/`profile_ref` None: estimate from the catalog.

    Node shape and pricing: `gpus_per_node` (the GPUs one node of this option carries) and
    `node_price_per_hour` (its $/h), each None to take them from the catalog's instance shapes.
    `pricing` "gpu" (the paper's model, a replica costs its GPUs) or "node" (whole nodes are bought);
    a spec that gives nodePricePerHour defaults to "node"."""

    name: str
    gpu: str
    price_per_hour: float | None
    gpus_per_replica: int = 1
    min_replicas: int = 0
    max_replicas: int | None = None
    spot: bool = False
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    profile_inline: Mapping[str, Any] | None = None
    profile_ref: KeyRef | None = None
    pricing: str = "gpu"
    gpus_per_node: int | None = None
    node_price_per_hour: float | None = None
    affinity: Mapping[str, Any] | None = None  # the pods' `affinity`, in place of the GPU type's default


@dataclass(frozen=True)
class NodePoolDisruption:
    """`spec.nodePools.disruption`: how Karpenter may take the service's GPU nodes away.

    Defaults, chosen for nodes that serve: `expire_after` "Never", since Karpenter v1's expiry is
    forceful (no budget, no replacement launched first) and would drain a serving GPU node at an
    arbitrary hour (Karpenter's own default is 720h); `consolidate_after` 5m of a node being empty
    (the policy is WhenEmpty: the operator decides replicas, Karpenter only removes empty nodes);
    `budgets` one node of the pool disrupted at a time (empty or drifted)."""

    expire_after: str = "Never"
    consolidate_after: str = "5m"
    budgets: tuple[Mapping[str, Any], ...] = ({"nodes": "1"},)


@dataclass(frozen=True)
class StaticWorkload:
    rate: float
    distribution: tuple[tuple[float, ...], ...] | None = None
    trace_ref: KeyRef | None = None


def _turned_off(duration: str) -> bool:
    """Whether a duration reads as zero ("0s", "0"): a window turned off."""
    return re.fullmatch(r"0+(\.0*)?(ms|s|m|h|d)?", duration.strip()) is not None


# The scale-up window's default: two of the default 60 s intervals, short enough to see a batch or a
# burst within a pass or two, long enough to hold a few scrapes at Prometheus's usual 15-30 s.
DEFAULT_SCALE_UP_WINDOW = "2m"
DEFAULT_SCALE_UP_WINDOW_S = parse_duration(DEFAULT_SCALE_UP_WINDOW, "DEFAULT_SCALE_UP_WINDOW")


@dataclass(frozen=True)
class PrometheusWorkload:
    url: str | None = None
    selector: Mapping[str, str] = field(default_factory=dict)
    window_s: float = 600.0
    window: str = "10m"
    min_requests: int | None = None
    bearer_token_ref: KeyRef | None = None
    ca_ref: KeyRef | None = None
    # The shorter window read for growth, as written and in seconds; None: none is read (turned off
    # with 0s, or the default is not shorter than the window).
    scale_up: tuple[str, float] | None = (DEFAULT_SCALE_UP_WINDOW, DEFAULT_SCALE_UP_WINDOW_S)


def _scale_up(written: Any, window: str, window_s: float, where: str) -> tuple[str, float] | None:
    """The scale-up window a spec asks for (see PrometheusWorkload.scale_up); refused unless shorter than
    the window."""
    if written is None:
        return (DEFAULT_SCALE_UP_WINDOW, DEFAULT_SCALE_UP_WINDOW_S) if DEFAULT_SCALE_UP_WINDOW_S < window_s else None
    text = str(written)
    if _turned_off(text):
        return None
    seconds = parse_duration(text, where)
    if seconds >= window_s:
        raise InputError(where, f"{text} is not shorter than the window ({window})",
                         "a shorter duration, or 0s to read no scale-up window")
    return text, seconds


@dataclass(frozen=True)
class WorkloadSpec:
    source: str
    static: StaticWorkload | None
    prometheus: PrometheusWorkload | None
    grid: BucketGrid | None


@dataclass(frozen=True)
class ReallocationSpec:
    interval_s: float = 60.0
    target_utilisation: float = DEFAULT_TARGET_UTILISATION
    min_savings_percent: float = 5.0
    cooldown_s: float = 600.0
    # Above the vLLM pools' startup probe (10 s x 180 = 30 min to load a model), plus time to get a node.
    move_timeout_s: float = 2700.0


@dataclass(frozen=True)
class ServingSpec:
    image: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)
    port: int = 8000
    # Where the weights are cached: {"emptyDir": {"sizeLimit": ...}} or {"persistentVolumeClaim":
    # {"claimName": ...}}; None: an emptyDir sized from the model.
    model_cache: Mapping[str, Any] | None = None
    hf_token_ref: KeyRef | None = None  # a Secret key with a Hugging Face token (gated models)


@dataclass(frozen=True)
class ServiceSpec:
    """A whole LLMService spec."""

    model: str
    catalog_model: str | None
    slo: Slo
    options: tuple[GpuOptionSpec, ...]
    workload: WorkloadSpec
    reallocation: ReallocationSpec = ReallocationSpec()
    mode: str = "apply"
    routing_mode: str = "routable"
    node_pool_provider: str = "none"
    node_class_ref: Mapping[str, str] | None = None
    node_pool_disruption: NodePoolDisruption = NodePoolDisruption()
    serving: ServingSpec = ServingSpec()
    router_image: str | None = None
    router_replicas: int = 2
    profile_correction: CorrectionSettings = CorrectionSettings()

    def option(self, name: str) -> GpuOptionSpec:
        return next(o for o in self.options if o.name == name)


_SPEC_FIELDS = ["model", "catalogModel", "slo", "gpuOptions", "workload", "reallocation", "mode", "routingMode",
                "nodePools", "serving", "router", "profileCorrection"]
_OPTION_FIELDS = ["name", "gpu", "pricePerHour", "gpusPerReplica", "minReplicas", "maxReplicas", "spot",
                  "nodeSelector", "tolerations", "profile", "affinity", "pricing", "gpusPerNode", "nodePricePerHour"]


def parse_spec(spec: Any, where: str = "spec") -> ServiceSpec:
    """Read an LLMService `spec`; InputError names the first wrong field (e.g. `spec.gpuOptions[1].gpu`)."""
    data = require_mapping(spec, where)
    require_keys(data, where, ["model", "slo", "gpuOptions"], _SPEC_FIELDS)
    options = tuple(_option(item, f"{where}.gpuOptions[{k}]")
                    for k, item in enumerate(sequence(data["gpuOptions"], f"{where}.gpuOptions")))
    seen: set[str] = set()
    for k, option in enumerate(options):
        if option.name in seen:
            raise InputError(f"{where}.gpuOptions[{k}].name", f"duplicate option name {option.name!r}", "unique names")
        seen.add(option.name)
    catalog_model = _optional_text(data, "catalogModel", where)
    if catalog_model is None:
        unprofiled = [o.name for o in options if o.profile_inline is None and o.profile_ref is None]
        if unprofiled:
            raise InputError(f"{where}.catalogModel", f"missing, and option {unprofiled[0]!r} has no profile",
                             "a catalog model to estimate profiles from, or a profile on every option")
    realloc = _reallocation(data.get("reallocation", {}), f"{where}.reallocation")
    node_pools = require_mapping(data.get("nodePools", {}), f"{where}.nodePools")
    require_keys(node_pools, f"{where}.nodePools", [], ["provider", "nodeClassRef", "disruption"])
    provider = _choice(node_pools.get("provider", "none"), f"{where}.nodePools.provider", NODE_POOL_PROVIDERS)
    node_class = node_pools.get("nodeClassRef")
    if node_class is not None:
        node_class = require_mapping(node_class, f"{where}.nodePools.nodeClassRef")
        require_keys(node_class, f"{where}.nodePools.nodeClassRef", ["group", "kind", "name"])
        node_class = {k: text(node_class[k], f"{where}.nodePools.nodeClassRef.{k}") for k in ("group", "kind", "name")}
    if provider == "karpenter" and node_class is None:
        raise InputError(f"{where}.nodePools.nodeClassRef", "missing for provider karpenter",
                         "{group, kind, name} of the node class, e.g. karpenter.k8s.aws EC2NodeClass default")
    router = require_mapping(data.get("router", {}), f"{where}.router")
    require_keys(router, f"{where}.router", [], ["image", "replicas"])
    model = text(data["model"], f"{where}.model")
    serving = _serving(data.get("serving", {}), f"{where}.serving")
    check_serving_args(serving.args, model, serving.port, f"{where}.serving.args")
    return ServiceSpec(
        model=model,
        catalog_model=catalog_model,
        slo=slo_from_dict(data["slo"], f"{where}.slo", ("tpotMs", "ttftMs", "percentile")),
        options=options,
        workload=_workload(data.get("workload", {"source": "static"}), f"{where}.workload"),
        reallocation=realloc,
        mode=_choice(data.get("mode", "apply"), f"{where}.mode", MODES),
        routing_mode=_choice(data.get("routingMode", "routable"), f"{where}.routingMode", ROUTING_MODES),
        node_pool_provider=provider,
        node_class_ref=node_class,
        node_pool_disruption=_disruption(node_pools.get("disruption", {}), f"{where}.nodePools.disruption"),
        serving=serving,
        router_image=_optional_text(router, "image", f"{where}.router"),
        router_replicas=integer(router.get("replicas", 2), f"{where}.router.replicas", minimum=1),
        profile_correction=_profile_correction(data.get("profileCorrection", {}), f"{where}.profileCorrection"),
    )


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(where, f"expected true or false, got {value!r}")
    return value


def _profile_correction(value: Any, where: str) -> CorrectionSettings:
    """`spec.profileCorrection` (operator/core/corrections.py)."""
    data = require_mapping(value, where)
    require_keys(data, where, [], ["enabled", "allowUpward", "maxUpward", "minRequests", "halfLife"])
    default = CorrectionSettings()
    return CorrectionSettings(
        enabled=_flag(data.get("enabled", default.enabled), f"{where}.enabled"),
        allow_upward=_flag(data.get("allowUpward", default.allow_upward), f"{where}.allowUpward"),
        max_upward=number(data.get("maxUpward", default.max_upward), f"{where}.maxUpward", minimum=1, maximum=2),
        min_requests=integer(data.get("minRequests", default.min_requests), f"{where}.minRequests", minimum=1),
        half_life_s=parse_duration(str(data.get("halfLife", "1h")), f"{where}.halfLife"),
    )


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InputError(where, f"unknown value {value!r}", ", ".join(allowed))
    return value


def _optional_text(data: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if data.get(key) is None else text(data[key], f"{where}.{key}")


def _key_ref(value: Any, where: str) -> KeyRef:
    data = require_mapping(value, where)
    require_keys(data, where, ["name", "key"])
    return KeyRef(text(data["name"], f"{where}.name"), text(data["key"], f"{where}.key"))


def _dns_label(value: Any, where: str, max_length: int) -> str:
    name = text(value, where)
    if (len(name) > max_length or set(name) - DNS_LABEL_CHARS or name.startswith("-") or name.endswith("-")):
        raise InputError(where, f"{name!r} is not a DNS label of at most {max_length} characters",
                         "lower-case letters, digits and '-', starting and ending alphanumeric")
    return name


def _option(value: Any, where: str) -> GpuOptionSpec:
    data = require_mapping(value, where)
    require_keys(data, where, ["name", "gpu"], _OPTION_FIELDS)
    max_replicas = None if data.get("maxReplicas") is None else integer(data["maxReplicas"], f"{where}.maxReplicas",
                                                                        minimum=0)
    min_replicas = integer(data.get("minReplicas", 0), f"{where}.minReplicas", minimum=0)
    if max_replicas is not None and min_replicas > max_replicas:
        raise InputError(f"{where}.minReplicas", f"{min_replicas} is above maxReplicas {max_replicas}",
                         "minReplicas <= maxReplicas")
    spot = data.get("spot", False)
    if not isinstance(spot, bool):
        raise InputError(f"{where}.spot", f"expected true or false, got {spot!r}")
    selector = require_mapping(data.get("nodeSelector", {}), f"{where}.nodeSelector")
    for key, label in selector.items():
        if not isinstance(label, str):
            raise InputError(f"{where}.nodeSelector.{key}", f"expected a string, got {label!r}")
    tolerations = tuple(require_mapping(t, f"{where}.tolerations[{k}]")
                        for k, t in enumerate(sequence(data.get("tolerations", []), f"{where}.tolerations",
                                                       nonempty=False)))
    inline, ref = None, None
    if data.get("profile") is not None:
        profile = require_mapping(data["profile"], f"{where}.profile")
        require_keys(profile, f"{where}.profile", [], ["inline", "configMapRef"])
        if ("inline" in profile) == ("configMapRef" in profile):
            raise InputError(f"{where}.profile", "needs exactly one source", "inline or configMapRef")
        if "inline" in profile:
            inline = require_mapping(profile["inline"], f"{where}.profile.inline")
        else:
            ref = _key_ref(profile["configMapRef"], f"{where}.profile.configMapRef")
    price = data.get("pricePerHour")
    gpus_per_replica = integer(data.get("gpusPerReplica", 1), f"{where}.gpusPerReplica", minimum=1)
    gpus_per_node = None if data.get("gpusPerNode") is None else integer(data["gpusPerNode"],
                                                                         f"{where}.gpusPerNode", minimum=1)
    node_price = None if data.get("nodePricePerHour") is None else number(
        data["nodePricePerHour"], f"{where}.nodePricePerHour", minimum=0, strict_minimum=True)
    check_node_shape(gpus_per_replica, gpus_per_node, node_price, where,
                     ("gpusPerNode", "nodePricePerHour", "gpusPerReplica"))
    pricing = _choice(data.get("pricing", "gpu" if node_price is None else "node"), f"{where}.pricing", PRICINGS)
    return GpuOptionSpec(
        name=_dns_label(data["name"], f"{where}.name", 24),
        gpu=text(data["gpu"], f"{where}.gpu"),
        price_per_hour=None if price is None else number(price, f"{where}.pricePerHour", minimum=0,
                                                         strict_minimum=True),
        gpus_per_replica=gpus_per_replica,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        spot=spot,
        node_selector=dict(selector),
        tolerations=tolerations,
        profile_inline=inline,
        profile_ref=ref,
        affinity=None if data.get("affinity") is None else dict(require_mapping(data["affinity"],
                                                                                f"{where}.affinity")),
        pricing=pricing,
        gpus_per_node=gpus_per_node,
        node_price_per_hour=node_price,
    )


def _karpenter_text(value: Any, where: str, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InputError(where, f"{value!r} is not {allowed}", allowed)
    return value


def _disruption(value: Any, where: str) -> NodePoolDisruption:
    """`nodePools.disruption {expireAfter, consolidateAfter, budgets}`, checked as Karpenter's schema does."""
    data = require_mapping(value, where)
    require_keys(data, where, [], ["expireAfter", "consolidateAfter", "budgets"])
    default = NodePoolDisruption()
    duration = "a Karpenter duration such as 720h, 30m or Never"
    budgets = []
    raw = default.budgets if data.get("budgets") is None else sequence(data["budgets"], f"{where}.budgets",
                                                                      nonempty=False)
    if len(raw) > 50:
        raise InputError(f"{where}.budgets", f"{len(raw)} budgets", "at most 50")
    for k, item in enumerate(raw):
        here = f"{where}.budgets[{k}]"
        budget = require_mapping(item, here)
        require_keys(budget, here, ["nodes"], ["nodes", "reasons", "schedule", "duration"])
        checked: dict[str, Any] = {"nodes": _karpenter_text(budget["nodes"], f"{here}.nodes", KARPENTER_BUDGET_NODES,
                                                            "a node count or a percentage, as a string (\"1\", \"10%\")")}
        if "reasons" in budget:
            reasons = sequence(budget["reasons"], f"{here}.reasons", nonempty=False)
            for j, reason in enumerate(reasons):
                _choice(reason, f"{here}.reasons[{j}]", KARPENTER_REASONS)
            checked["reasons"] = list(reasons)
        if ("schedule" in budget) != ("duration" in budget):
            raise InputError(here, "schedule and duration go together", "both (a cron schedule and a duration) or neither")
        if "schedule" in budget:
            checked["schedule"] = text(budget["schedule"], f"{here}.schedule")
            checked["duration"] = _karpenter_text(budget["duration"], f"{here}.duration", KARPENTER_BUDGET_DURATION,
                                                  "hours and/or minutes, e.g. 8h or 1h30m")
        budgets.append(checked)
    return NodePoolDisruption(
        expire_after=_karpenter_text(data.get("expireAfter", default.expire_after), f"{where}.expireAfter",
                                     KARPENTER_DURATION, duration),
        consolidate_after=_karpenter_text(data.get("consolidateAfter", default.consolidate_after),
                                          f"{where}.consolidateAfter", KARPENTER_DURATION, duration),
        budgets=tuple(budgets))


def _workload(value: Any, where: str) -> WorkloadSpec:
    data = require_mapping(value, where)
    require_keys(data, where, [], ["source", "static", "prometheus", "grid"])
    source = _choice(data.get("source", "static"), f"{where}.source", WORKLOAD_SOURCES)
    grid = None
    if data.get("grid") is not None:
        raw = require_mapping(data["grid"], f"{where}.grid")
        require_keys(raw, f"{where}.grid", ["inputEdges", "outputEdges"])
        grid = grid_from_dict({"input_edges": raw["inputEdges"], "output_edges": raw["outputEdges"]}, f"{where}.grid")
    static = None
    if data.get("static") is not None:
        raw = require_mapping(data["static"], f"{where}.static")
        require_keys(raw, f"{where}.static", ["rate"], ["distribution", "traceConfigMapRef"])
        if ("distribution" in raw) == ("traceConfigMapRef" in raw):
            raise InputError(f"{where}.static", "needs exactly one mix", "distribution or traceConfigMapRef")
        distribution = None
        if "distribution" in raw:
            distribution = tuple(tuple(number(v, f"{where}.static.distribution[{i}][{j}]", minimum=0)
                                       for j, v in enumerate(sequence(row, f"{where}.static.distribution[{i}]")))
                                 for i, row in enumerate(sequence(raw["distribution"], f"{where}.static.distribution")))
        static = StaticWorkload(
            rate=number(raw["rate"], f"{where}.static.rate", minimum=0),
            distribution=distribution,
            trace_ref=_key_ref(raw["traceConfigMapRef"], f"{where}.static.traceConfigMapRef")
            if "traceConfigMapRef" in raw else None)
    if source == "static" and static is None:
        raise InputError(f"{where}.static", "missing for source static", "{rate, distribution | traceConfigMapRef}")
    prometheus = None
    if data.get("prometheus") is not None:
        raw = require_mapping(data["prometheus"], f"{where}.prometheus")
        require_keys(raw, f"{where}.prometheus", [], ["url", "selector", "window", "minRequests", "scaleUpWindow",
                                                      "bearerTokenSecretRef", "caConfigMapRef"])
        window = str(raw.get("window", "10m"))
        window_s = parse_duration(window, f"{where}.prometheus.window")
        scale_up = _scale_up(raw.get("scaleUpWindow"), window, window_s, f"{where}.prometheus.scaleUpWindow")
        selector = require_mapping(raw.get("selector", {}), f"{where}.prometheus.selector")
        for key, label in selector.items():
            if not isinstance(label, str):
                raise InputError(f"{where}.prometheus.selector.{key}", f"expected a string, got {label!r}")
        prometheus = PrometheusWorkload(
            url=_optional_text(raw, "url", f"{where}.prometheus"),
            selector=dict(selector),
            window_s=window_s,
            window=window,
            scale_up=scale_up,
            min_requests=None if raw.get("minRequests") is None else integer(
                raw["minRequests"], f"{where}.prometheus.minRequests", minimum=0),
            bearer_token_ref=_key_ref(raw["bearerTokenSecretRef"], f"{where}.prometheus.bearerTokenSecretRef")
            if "bearerTokenSecretRef" in raw else None,
            ca_ref=_key_ref(raw["caConfigMapRef"], f"{where}.prometheus.caConfigMapRef")
            if "caConfigMapRef" in raw else None)
    elif source == "prometheus":
        prometheus = PrometheusWorkload()
    return WorkloadSpec(source, static, prometheus, grid)


def _reallocation(value: Any, where: str) -> ReallocationSpec:
    data = require_mapping(value, where)
    require_keys(data, where, [], ["interval", "targetUtilisation", "minSavingsPercent", "cooldown",
                                   "moveTimeout"])
    return ReallocationSpec(
        interval_s=parse_duration(str(data.get("interval", "60s")), f"{where}.interval"),
        target_utilisation=number(data.get("targetUtilisation", DEFAULT_TARGET_UTILISATION),
                                  f"{where}.targetUtilisation", minimum=0, strict_minimum=True, maximum=1),
        min_savings_percent=number(data.get("minSavingsPercent", 5.0), f"{where}.minSavingsPercent", minimum=0,
                                   maximum=100),
        cooldown_s=parse_duration(str(data.get("cooldown", "10m")), f"{where}.cooldown"),
        move_timeout_s=parse_duration(str(data.get("moveTimeout", "45m")), f"{where}.moveTimeout"),
    )


def _serving(value: Any, where: str) -> ServingSpec:
    data = require_mapping(value, where)
    require_keys(data, where, [], ["image", "args", "env", "resources", "port", "modelCache", "hfTokenSecretRef"])
    args = tuple(text(a, f"{where}.args[{k}]") if isinstance(a, str) else _not_string(a, f"{where}.args[{k}]")
                 for k, a in enumerate(sequence(data.get("args", []), f"{where}.args", nonempty=False)))
    env = tuple(require_mapping(e, f"{where}.env[{k}]")
                for k, e in enumerate(sequence(data.get("env", []), f"{where}.env", nonempty=False)))
    for k, entry in enumerate(env):
        text(entry.get("name"), f"{where}.env[{k}].name")
    port = integer(data.get("port", 8000), f"{where}.port", minimum=1)
    if port > 65535:
        raise InputError(f"{where}.port", f"{port} is not a TCP port", "1-65535")
    return ServingSpec(image=_optional_text(data, "image", where), args=args, env=env,
                       resources=dict(require_mapping(data.get("resources", {}), f"{where}.resources")), port=port,
                       model_cache=_model_cache(data.get("modelCache"), f"{where}.modelCache"),
                       hf_token_ref=None if data.get("hfTokenSecretRef") is None else _key_ref(
                           data["hfTokenSecretRef"], f"{where}.hfTokenSecretRef"))


def _model_cache(value: Any, where: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    data = require_mapping(value, where)
    require_keys(data, where, [], ["emptyDir", "persistentVolumeClaim"])
    if len(data) != 1:
        raise InputError(where, "needs exactly one volume source", "emptyDir or persistentVolumeClaim")
    if "persistentVolumeClaim" in data:
        claim = require_mapping(data["persistentVolumeClaim"], f"{where}.persistentVolumeClaim")
        text(claim.get("claimName"), f"{where}.persistentVolumeClaim.claimName")
        return {"persistentVolumeClaim": dict(claim)}
    return {"emptyDir": dict(require_mapping(data["emptyDir"] or {}, f"{where}.emptyDir"))}


# `vllm serve` flags the operator sets itself or depends on: refused in serving.args when they would
# contradict the spec (the router and Prometheus find pools by served model name and port, and the
# live workload reads vLLM's metrics, which --disable-log-stats turns off).
OWNED_FLAGS = {"--served-model-name": "spec.model", "--port": "spec.serving.port"}


def check_serving_args(args: tuple[str, ...], model: str, port: int, where: str) -> None:
    """Refuse serving args that break what the operator relies on."""
    for k, arg in enumerate(args):
        flag, _, inline = arg.partition("=")
        if flag == "--disable-log-stats":
            raise InputError(f"{where}[{k}]", "--disable-log-stats turns off the metrics the operator reads",
                             "leave it out")
        if flag in OWNED_FLAGS:
            value = inline if inline else (args[k + 1] if k + 1 < len(args) else "")
            wanted = model if flag == "--served-model-name" else str(port)
            if value.split() != [wanted]:
                raise InputError(f"{where}[{k}]", f"{flag} {value!r} contradicts {OWNED_FLAGS[flag]} ({wanted!r})",
                                 f"leave {flag} out: the operator sets it from {OWNED_FLAGS[flag]}")


def _not_string(value: Any, where: str) -> str:
    raise InputError(where, f"expected a string, got {value!r}", "quote numbers in args, e.g. \"8192\"")
