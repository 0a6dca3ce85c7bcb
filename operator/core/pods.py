"""What a vLLM pool's pods need on a real GPU node, from the GPU type, the model and the SLO: where
they may run, the CPU, memory and disk they request, where the weights are cached, how long a
context they serve, and how long they may take to stop. Pure functions; the planner puts the answer
into the pod template.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from melange.operator.core.spec import GpuOptionSpec, ServiceSpec
from melange.solver.errors import InputError
from melange.solver.profiles import Profile
from melange.solver.profiling.catalog import Catalog, GpuSpec, ModelSpec

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA's GPU Feature Discovery
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"  # set by the cloud's node controller
CACHE_MOUNT = "/models"
PRESTOP_S = 10  # endpoints and the router stop sending to a terminating pod within a few seconds
# Host memory of a vLLM replica: the API server, tokenizer and engine core (about 6 GiB), one worker
# process per GPU (CUDA context, NCCL buffers: 1.5 GiB each), and buffers while the weights load (a
# quarter of their size: safetensors are memory-mapped and read shard by shard, the page cache they
# fill is reclaimable). Sized so that a 7-8 B model on one GPU fits the smallest one-GPU instances
# (g6.xlarge, g5.xlarge: 4 vCPU, 16 GiB, about 14.8 GiB allocatable).
RUNTIME_GIB, WORKER_GIB, LOAD_SHARE = 6.0, 1.5, 0.25
BYTES_PER_PARAMETER = 2  # fp16 / bf16 weights


@dataclass(frozen=True)
class PodShape:
    """The parts of a pool's pod template that depend on the GPU, the model and the SLO."""

    affinity: Mapping[str, Any] | None
    resources: Mapping[str, Mapping[str, str]]
    volumes: tuple[Mapping[str, Any], ...]
    mounts: tuple[Mapping[str, Any], ...]
    env: tuple[Mapping[str, Any], ...]
    args: tuple[str, ...] = field(default=())
    grace_s: int = 60


def catalog_gpu(catalog: Catalog | None, name: str) -> GpuSpec | None:
    """The catalog's entry for an option's GPU, or None for a GPU the catalog does not know."""
    if catalog is None:
        return None
    try:
        return catalog.gpu(name)
    except InputError:
        return None


def catalog_model(catalog: Catalog | None, spec: ServiceSpec, profiles: Mapping[str, Profile]) -> ModelSpec | None:
    """The served model's catalog entry: the spec's `catalogModel`, else the entry whose Hugging Face id
    is the served model, else the model the profiles were made for; None when none is known."""
    if catalog is None:
        return None
    by_id = [m.name for m in catalog.models.values() if m.hf_id and m.hf_id.lower() == spec.model.lower()]
    for name in [spec.catalog_model, *by_id, *sorted({p.model for p in profiles.values()})]:
        if name:
            try:
                return catalog.model(name)
            except InputError:
                continue
    return None


def gpu_affinity(gpu: GpuSpec | None) -> dict[str, Any] | None:
    """Node affinity to the nodes that carry `gpu`: its GPU Feature Discovery product label, or one of its
    instance types (terms are alternatives). None when the catalog names neither."""
    terms = []
    if gpu is not None and gpu.gpu_products:
        terms.append({"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In",
                                            "values": list(gpu.gpu_products)}]})
    if gpu is not None and gpu.instance_types:
        terms.append({"matchExpressions": [{"key": INSTANCE_TYPE_LABEL, "operator": "In",
                                            "values": list(gpu.instance_types)}]})
    if not terms:
        return None
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def weights_gib(model: ModelSpec | None, gpu: GpuSpec | None, gpus: int) -> float:
    """The model's weights (GiB); unknown model: half the replica's GPU memory, a middle guess."""
    if model is not None:
        return model.parameters_b * 1e9 * BYTES_PER_PARAMETER / 2**30
    memory = gpu.memory_gb if gpu is not None else 24.0
    return 0.5 * memory * gpus * 1e9 / 2**30


def max_model_len(profiles: Mapping[str, Profile], model: ModelSpec | None) -> int | None:
    """One context length for every pool: the longest request the grid admits (largest input edge plus
    largest output edge), within the model's context."""
    longest = max((p.grid.input_edges[-1] + p.grid.output_edges[-1] for p in profiles.values()
                   if not p.grid.indexed), default=None)
    if longest is None:
        return model.context_length if model is not None else None
    return min(longest, model.context_length) if model is not None else longest


def grace_period_s(spec: ServiceSpec, profiles: Mapping[str, Profile]) -> int:
    """Time for the longest request the grid allows to finish at the SLO after the pod is told to stop:
    TTFT plus the largest output edge x TPOT, plus the preStop pause (and 10 s of margin)."""
    output = max((p.grid.output_edges[-1] for p in profiles.values() if not p.grid.indexed), default=2048)
    tpot_s = spec.slo.tpot_s if spec.slo.tpot_s is not None else 0.1
    ttft_s = spec.slo.ttft_s if spec.slo.ttft_s is not None else 2.0
    return PRESTOP_S + 10 + math.ceil(ttft_s + output * tpot_s)


def _gib(value: float) -> str:
    return f"{math.ceil(value)}Gi"


def pod_shape(spec: ServiceSpec, option: GpuOptionSpec, profiles: Mapping[str, Profile],
              catalog: Catalog | None) -> PodShape:
    """The pod-template parts of one option's pool; see the module docstring."""
    gpu = catalog_gpu(catalog, option.gpu)
    model = catalog_model(catalog, spec, profiles)
    gpus = option.gpus_per_replica
    weights = weights_gib(model, gpu, gpus)
    affinity = dict(option.affinity) if option.affinity is not None else \
        None if option.node_selector else gpu_affinity(gpu)
    cache = dict(spec.serving.model_cache or {"emptyDir": {}})
    requests = {"cpu": str(1 + gpus), "memory": _gib(RUNTIME_GIB + WORKER_GIB * gpus + LOAD_SHARE * weights)}
    if "emptyDir" in cache:
        size = cache["emptyDir"].get("sizeLimit") or _gib(1.25 * weights + 5)
        cache["emptyDir"] = {**cache["emptyDir"], "sizeLimit": size}
        requests["ephemeral-storage"] = str(size)
    user = spec.serving.resources
    resources = {"requests": {**requests, **{k: str(v) for k, v in dict(user.get("requests") or {}).items()}},
                 "limits": {k: str(v) for k, v in dict(user.get("limits") or {}).items()}}
    # Burstable: memory limited at its request (predictable eviction), CPU not limited (no throttling of
    # the API server and tokenizer); the GPU is requested and limited alike.
    resources["limits"].setdefault("memory", resources["requests"]["memory"])
    resources["requests"]["nvidia.com/gpu"] = resources["limits"]["nvidia.com/gpu"] = str(gpus)
    env: list[Mapping[str, Any]] = [{"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"}]
    if spec.serving.hf_token_ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.serving.hf_token_ref.name, "key": spec.serving.hf_token_ref.key}}})
    named = {e["name"]: i for i, e in enumerate(env)}
    for entry in spec.serving.env:  # the user's entries win, one entry per name
        if entry["name"] in named:
            env[named[entry["name"]]] = dict(entry)
        else:
            env.append(dict(entry))
    length = max_model_len(profiles, model)
    return PodShape(affinity=affinity, resources=resources,
                    volumes=({"name": "model-cache", **cache},),
                    mounts=({"name": "model-cache", "mountPath": CACHE_MOUNT},),
                    env=tuple(env), args=("--max-model-len", str(length)) if length else (),
                    grace_s=grace_period_s(spec, profiles))
