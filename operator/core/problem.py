"""From an LLMService spec (and the ConfigMaps it references) to the solver's Problem and settings.

Pure: the shell reads the referenced ConfigMaps and passes their data in; nothing here calls the
Kubernetes API. Errors name the spec field or the ConfigMap key.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

import yaml

from melange.solver.buckets import BucketGrid, check_same_grid, paper_grid
from melange.solver.errors import InputError
from melange.solver.ilp import IlpSettings
from melange.solver.options import GpuOption
from melange.solver.problem import Problem
from melange.solver.profiles import Profile, profile_from_dict, scale_profile
from melange.solver.profiling.catalog import Catalog, GpuSpec, shipped_catalog
from melange.solver.profiling.catalog_inputs import catalog_profile
from melange.solver.workload import Workload, make_workload, parse_trace, workload_from_trace
from melange.operator.core.planner import PodMonitorSettings
from melange.operator.core.spec import GpuOptionSpec, KeyRef, ServiceSpec

# ConfigMap data by (name, key), as the shell read it from the service's namespace.
ConfigData = Mapping[tuple[str, str], str]
# The well-known label clouds set to the instance type; an option's nodeSelector on it names its shape.
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


@dataclass(frozen=True)
class Inputs:
    """What one pass of a service needs besides the spec: referenced ConfigMap data, the catalog, and the
    PodMonitor to write (None: the cluster has no Prometheus Operator, or the operator was told not to)."""

    config: ConfigData
    catalog: Catalog
    monitoring: PodMonitorSettings | None = None


def default_inputs(config: ConfigData | None = None) -> Inputs:
    """Inputs with the shipped catalog."""
    return Inputs(dict(config or {}), shipped_catalog())


def config_refs(spec: ServiceSpec) -> list[KeyRef]:
    """Every ConfigMap key the spec points at (profiles, static trace), for the shell to read."""
    refs = [o.profile_ref for o in spec.options if o.profile_ref is not None]
    if spec.workload.static is not None and spec.workload.static.trace_ref is not None:
        refs.append(spec.workload.static.trace_ref)
    return refs


def _config_text(inputs: Inputs, ref: KeyRef, where: str) -> str:
    value = inputs.config.get((ref.name, ref.key))
    if value is None:
        raise InputError(where, f"ConfigMap {ref.name!r} has no key {ref.key!r} (or does not exist)",
                         "an existing ConfigMap and key in the service's namespace")
    return value


def explicit_profiles(spec: ServiceSpec, inputs: Inputs) -> dict[str, Profile]:
    """The inline and ConfigMap profiles by option name."""
    profiles = {}
    for k, option in enumerate(spec.options):
        where = f"spec.gpuOptions[{k}].profile"
        if option.profile_inline is not None:
            profiles[option.name] = profile_from_dict(dict(option.profile_inline), f"{where}.inline")
        elif option.profile_ref is not None:
            here = f"{where}.configMapRef ({option.profile_ref.name}/{option.profile_ref.key})"
            try:
                data = yaml.safe_load(_config_text(inputs, option.profile_ref, f"{where}.configMapRef"))
            except yaml.YAMLError as error:
                raise InputError(here, f"not valid YAML ({error})") from None
            profiles[option.name] = profile_from_dict(data, here)
    return profiles


def service_grid(spec: ServiceSpec, explicit: Mapping[str, Profile]) -> BucketGrid:
    """The spec's grid; else the grid of its first explicit profile; else the paper's 10x6 grid."""
    if spec.workload.grid is not None:
        return spec.workload.grid
    return next(iter(explicit.values())).grid if explicit else paper_grid()


def static_workload(spec: ServiceSpec, inputs: Inputs, grid: BucketGrid) -> Workload:
    """The workload of `spec.workload.static`: a distribution on the grid, or a trace binned onto it."""
    static = spec.workload.static
    if static is None:
        raise InputError("spec.workload.static", "missing", "{rate, distribution | traceConfigMapRef}")
    where = "spec.workload.static"
    if static.distribution is not None:
        return make_workload(static.rate, grid, [list(row) for row in static.distribution], where)
    ref = static.trace_ref
    text = _config_text(inputs, ref, f"{where}.traceConfigMapRef")
    here = f"ConfigMap {ref.name}/{ref.key}"
    requests = parse_trace(text, here, PurePosixPath(ref.key).suffix)
    return workload_from_trace(requests, grid, static.rate, here)


def node_shape(option: GpuOptionSpec, gpu: GpuSpec | None, gpu_price: float | None,
               where: str) -> tuple[int | None, float | None]:
    """GPUs per node of an option and, when it is priced by the node, the node's $/h.

    The GPUs: the option's gpusPerNode; else the catalog's instance type that its nodeSelector names
    (`node.kubernetes.io/instance-type`); else the catalog's cheapest instance type per replica
    that carries the GPU; else unknown (None). The node price (pricing "node" only):
    nodePricePerHour; else that instance type's price; else gpusPerNode x the per-GPU price.
    InputError when the option asks for node pricing and no node size is known."""
    gpus, price = option.gpus_per_node, option.node_price_per_hour
    if gpus is None and gpu is not None:
        shape = gpu.node_shape(option.gpus_per_replica, option.node_selector.get(INSTANCE_TYPE_LABEL))
        if shape is not None:  # (nodePricePerHour comes only with gpusPerNode)
            gpus, price = shape.gpus, shape.price_per_hour
    if option.pricing != "node":
        return gpus, None
    if gpus is None:
        raise InputError(f"{where}.pricing", f"node, but no node size is known for {option.gpus_per_replica} "
                                             f"{option.gpu} GPU(s) per replica",
                         "gpusPerNode and nodePricePerHour on the option, or a catalog GPU with node_shapes")
    if price is None and gpu_price is not None:
        price = gpus * gpu_price
    return gpus, price


def _option(spec: ServiceSpec, k: int, option: GpuOptionSpec, profile: Profile | None, inputs: Inputs,
            grid: BucketGrid) -> tuple[GpuOption, Profile]:
    where = f"spec.gpuOptions[{k}]"
    price = option.price_per_hour
    try:
        catalog_gpu: GpuSpec | None = inputs.catalog.gpu(option.gpu)
    except InputError:
        catalog_gpu = None  # a GPU the catalog does not know needs a price and a profile (checked below)
    if profile is None or price is None:
        try:
            gpu = inputs.catalog.gpu(option.gpu)
        except InputError as error:
            raise InputError(f"{where}.gpu", error.problem, error.allowed) from None
        price = gpu.price_per_hour if price is None else price
        if profile is None:
            try:
                model = inputs.catalog.model(spec.catalog_model or "")
            except InputError as error:
                raise InputError("spec.catalogModel", error.problem, error.allowed) from None
            profile = catalog_profile(model, gpu, option.gpus_per_replica, spec.slo, grid)
    check_same_grid(grid, profile.grid, f"{where}.profile ({profile.gpu})")
    if profile.slo is not None and profile.slo != spec.slo:
        raise InputError(f"{where}.profile", f"made for {profile.slo.describe()}, the spec asks {spec.slo.describe()}",
                         "a profile made for the spec's SLO")
    if profile.gpus_per_replica != option.gpus_per_replica:
        raise InputError(f"{where}.gpusPerReplica", f"{option.gpus_per_replica}, but the profile was made with "
                                                    f"{profile.gpus_per_replica} GPU(s) per replica",
                         "the profile's tensor-parallel degree")
    gpus_per_node, node_price = node_shape(option, catalog_gpu, price, where)
    return GpuOption(option.name, price, gpu=profile.gpu, gpus_per_replica=option.gpus_per_replica,
                     max_replicas=option.max_replicas, spot=option.spot, min_replicas=option.min_replicas,
                     gpus_per_node=gpus_per_node, node_price_per_hour=node_price), profile


def build_problem(spec: ServiceSpec, workload: Workload | None, inputs: Inputs,
                  corrections: Mapping[str, float] | None = None) -> Problem:
    """The Problem for `spec`: one solver option per `gpuOptions[]` entry with its profile (inline,
    ConfigMap, shipped or estimated), its max rates multiplied by the option's capacity correction
    (`corrections[name]`, operator/core/corrections.py; absent: 1). `workload` None means the spec's
    static workload."""
    explicit = explicit_profiles(spec, inputs)
    grid = workload.grid if workload is not None else service_grid(spec, explicit)
    if workload is None:
        workload = static_workload(spec, inputs, grid)
    pairs = [_option(spec, k, o, explicit.get(o.name), inputs, grid) for k, o in enumerate(spec.options)]
    factors = corrections or {}
    return Problem(workload, tuple(p[0] for p in pairs),
                   tuple(scale_profile(p[1], factors.get(p[0].name, 1.0)) for p in pairs))


def solver_settings(spec: ServiceSpec, current: Mapping[str, int] | None = None, move_cost: float = 0.0) -> IlpSettings:
    """ILP settings for the service: its headroom, and (part of reallocation) the move cost."""
    return IlpSettings(target_utilisation=spec.reallocation.target_utilisation, current=dict(current or {}),
                       move_cost=move_cost)
