"""The GPU and model catalog: hardware specs with dated prices, and model architectures, shipped as
package data (`solver/profiling/data/catalog/`) and extendable with the user's own files of the same shape.
A model can also be read from a Hugging Face `config.json`."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from melange.solver.checks import integer, number, require_keys, require_mapping, sequence, text
from melange.solver.errors import InputError
from melange.solver.inputs import load_document

BYTES_PER_PARAMETER = 2  # FP16/BF16 weights and KV cache, vLLM's default dtype for these models


@dataclass(frozen=True)
class NodeShape:
    """An instance type that carries a GPU: how many, and its on-demand $/h (the whole instance)."""

    instance_type: str
    gpus: int
    price_per_hour: float
    source: str = ""

    def replicas(self, gpus_per_replica: int) -> int:
        """Replicas of `gpus_per_replica` GPUs one instance holds (a replica's GPUs are on one node)."""
        return self.gpus // gpus_per_replica


@dataclass(frozen=True)
class GpuSpec:
    """One GPU type: memory (GB), memory bandwidth (GB/s), dense FP16 TFLOPS, on-demand $/h per GPU,
    and the instance types that carry it (`node_shapes`), where the catalog knows them."""

    name: str
    memory_gb: float
    bandwidth_gb_s: float
    fp16_tflops: float
    price_per_hour: float
    price_source: str = ""
    price_date: str = ""
    aliases: tuple[str, ...] = ()
    # Node labels that identify the GPU, for placing a pool's pods on it: GPU Feature Discovery's
    # `nvidia.com/gpu.product` values, and the instance types that carry it (an alternative label).
    gpu_products: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()
    node_shapes: tuple[NodeShape, ...] = ()

    def node_shape(self, gpus_per_replica: int = 1, instance_type: str | None = None) -> NodeShape | None:
        """The instance type a replica of `gpus_per_replica` GPUs runs on: the one named (when the
        catalog has it), else the cheapest per replica among those that hold one (ties: fewer GPUs);
        None when the catalog knows none."""
        fitting = [s for s in self.node_shapes if s.replicas(gpus_per_replica) >= 1]
        if instance_type is not None:
            return next((s for s in fitting if s.instance_type == instance_type), None)
        if not fitting:
            return None
        return min(fitting, key=lambda s: (s.price_per_hour / s.replicas(gpus_per_replica), s.gpus))


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape, as far as serving cost depends on it."""

    name: str
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    parameters_b: float
    context_length: int
    active_parameters_b: float | None = None
    hf_id: str = ""

    @property
    def weight_bytes(self) -> float:
        return self.parameters_b * 1e9 * BYTES_PER_PARAMETER

    @property
    def active_parameters(self) -> float:
        """Parameters that run per token (all of them unless it is a mixture of experts)."""
        return (self.active_parameters_b or self.parameters_b) * 1e9

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token occupies: keys and values of every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * BYTES_PER_PARAMETER


@dataclass(frozen=True)
class Catalog:
    """GPUs and models by canonical name; lookups accept aliases and any letter case."""

    gpus: Mapping[str, GpuSpec]
    models: Mapping[str, ModelSpec]

    def gpu(self, name: str) -> GpuSpec:
        """The GPU called `name` (or one of its aliases)."""
        key = name.strip().lower()
        for spec in self.gpus.values():
            if key == spec.name.lower() or key in spec.aliases:
                return spec
        raise InputError("gpu", f"unknown GPU {name!r}", ", ".join(sorted(self.gpus)))

    def model(self, name: str) -> ModelSpec:
        """The model called `name` (or its Hugging Face id)."""
        key = name.strip().lower()
        for spec in self.models.values():
            if key in (spec.name.lower(), spec.hf_id.lower()):
                return spec
        raise InputError("model", f"unknown model {name!r}",
                         ", ".join(sorted(self.models)) + ", or a Hugging Face config.json path")

    def merged(self, other: Catalog) -> Catalog:
        """This catalog with `other`'s entries added, replacing same-named ones."""
        return Catalog({**self.gpus, **other.gpus}, {**self.models, **other.models})


_GPU_FIELDS = ["name", "memory_gb", "bandwidth_gb_s", "fp16_tflops", "price_per_hour"]
_GPU_OPTIONAL = ["price_source", "price_date", "aliases", "gpu_products", "instance_types", "node_shapes"]
_SHAPE_FIELDS = ["instance_type", "gpus", "price_per_hour"]
_MODEL_FIELDS = ["name", "layers", "hidden_size", "attention_heads", "kv_heads", "head_dim", "parameters_b",
                 "context_length"]
_MODEL_OPTIONAL = ["active_parameters_b", "hf_id"]


def gpu_from_dict(data: Any, where: str) -> GpuSpec:
    """Read one catalog GPU entry."""
    mapping = require_mapping(data, where)
    require_keys(mapping, where, _GPU_FIELDS, _GPU_OPTIONAL)
    positive = {key: number(mapping[key], f"{where}.{key}", minimum=0, strict_minimum=True)
                for key in ("memory_gb", "bandwidth_gb_s", "fp16_tflops", "price_per_hour")}
    aliases = tuple(text(a, f"{where}.aliases[{k}]").lower()
                    for k, a in enumerate(sequence(mapping.get("aliases") or [], f"{where}.aliases", nonempty=False)))
    labels = {key: tuple(text(value, f"{where}.{key}[{k}]") for k, value in enumerate(
        sequence(mapping.get(key) or [], f"{where}.{key}", nonempty=False))) for key in ("gpu_products", "instance_types")}
    shapes = tuple(node_shape_from_dict(item, f"{where}.node_shapes[{k}]") for k, item in
                   enumerate(sequence(mapping.get("node_shapes") or [], f"{where}.node_shapes", nonempty=False)))
    return GpuSpec(name=text(mapping["name"], f"{where}.name"), price_source=str(mapping.get("price_source", "")),
                   price_date=str(mapping.get("price_date", "")), aliases=aliases, node_shapes=shapes, **labels,
                   **positive)


def node_shape_from_dict(data: Any, where: str) -> NodeShape:
    """Read one `node_shapes` entry: `{instance_type, gpus, price_per_hour, source?}`."""
    mapping = require_mapping(data, where)
    require_keys(mapping, where, _SHAPE_FIELDS, ["source"])
    return NodeShape(instance_type=text(mapping["instance_type"], f"{where}.instance_type"),
                     gpus=integer(mapping["gpus"], f"{where}.gpus", minimum=1),
                     price_per_hour=number(mapping["price_per_hour"], f"{where}.price_per_hour", minimum=0,
                                           strict_minimum=True),
                     source=str(mapping.get("source", "")))


def model_from_dict(data: Any, where: str) -> ModelSpec:
    """Read one catalog model entry."""
    mapping = require_mapping(data, where)
    require_keys(mapping, where, _MODEL_FIELDS, _MODEL_OPTIONAL)
    counts = {key: integer(mapping[key], f"{where}.{key}", minimum=1)
              for key in ("layers", "hidden_size", "attention_heads", "kv_heads", "head_dim", "context_length")}
    if counts["attention_heads"] % counts["kv_heads"]:
        raise InputError(f"{where}.kv_heads", f"{counts['kv_heads']} does not divide attention_heads "
                         f"{counts['attention_heads']}", "a divisor of attention_heads")
    active = mapping.get("active_parameters_b")
    parameters = number(mapping["parameters_b"], f"{where}.parameters_b", minimum=0, strict_minimum=True)
    if active is not None:
        active = number(active, f"{where}.active_parameters_b", minimum=0, strict_minimum=True, maximum=parameters)
    return ModelSpec(name=text(mapping["name"], f"{where}.name"), parameters_b=parameters, active_parameters_b=active,
                     hf_id=str(mapping.get("hf_id", "")), **counts)


def catalog_from_dict(data: Any, where: str) -> Catalog:
    """Read a catalog file: `{gpus?: [...], models?: [...], catalog_date?}`."""
    mapping = require_mapping(data, where)
    require_keys(mapping, where, [], ["gpus", "models", "catalog_date"])
    gpus = [gpu_from_dict(g, f"{where}.gpus[{k}]")
            for k, g in enumerate(sequence(mapping.get("gpus") or [], f"{where}.gpus", nonempty=False))]
    models = [model_from_dict(m, f"{where}.models[{k}]")
              for k, m in enumerate(sequence(mapping.get("models") or [], f"{where}.models", nonempty=False))]
    return Catalog({g.name: g for g in gpus}, {m.name: m for m in models})


def shipped_catalog() -> Catalog:
    """The catalog that comes with the package."""
    folder = resources.files("melange.solver.profiling") / "data" / "catalog"
    catalog = Catalog({}, {})
    for name in ("gpus.yaml", "models.yaml"):
        catalog = catalog.merged(catalog_from_dict(yaml.safe_load(folder.joinpath(name).read_text()),
                                                   f"catalog {name}"))
    return catalog


def load_catalog(extra: Iterable[Path] = ()) -> Catalog:
    """The shipped catalog extended (and overridden by name) with the user's catalog files."""
    catalog = shipped_catalog()
    for path in extra:
        catalog = catalog.merged(catalog_from_dict(load_document(Path(path)), str(path)))
    return catalog


def model_from_hf_config(data: Mapping[str, Any], name: str, where: str = "config.json") -> ModelSpec:
    """A model from a Hugging Face `config.json` (Llama, Mistral, Qwen2, Mixtral field names);
    the parameter count is computed from the shapes."""
    require_mapping(data, where)
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key not in data:
            raise InputError(f"{where}.{key}", "missing", "a decoder-only transformer config (Llama, Mistral, "
                             "Qwen2, Mixtral)")
    layers = integer(data["num_hidden_layers"], f"{where}.num_hidden_layers", minimum=1)
    hidden = integer(data["hidden_size"], f"{where}.hidden_size", minimum=1)
    heads = integer(data["num_attention_heads"], f"{where}.num_attention_heads", minimum=1)
    kv_heads = integer(data.get("num_key_value_heads") or heads, f"{where}.num_key_value_heads", minimum=1)
    head_dim = integer(data.get("head_dim") or hidden // heads, f"{where}.head_dim", minimum=1)
    intermediate = integer(data["intermediate_size"], f"{where}.intermediate_size", minimum=1)
    vocab = integer(data["vocab_size"], f"{where}.vocab_size", minimum=1)
    experts = integer(data.get("num_local_experts") or 1, f"{where}.num_local_experts", minimum=1)
    active_experts = integer(data.get("num_experts_per_tok") or 1, f"{where}.num_experts_per_tok", minimum=1)
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * intermediate  # gated MLP: gate, up and down projections
    embeddings = vocab * hidden * (1 if data.get("tie_word_embeddings") else 2)
    total = layers * (attention + experts * mlp) + embeddings
    active = layers * (attention + min(active_experts, experts) * mlp) + embeddings
    context = integer(data.get("max_position_embeddings") or 4096, f"{where}.max_position_embeddings", minimum=1)
    return ModelSpec(name=name, layers=layers, hidden_size=hidden, attention_heads=heads, kv_heads=kv_heads,
                     head_dim=head_dim, parameters_b=round(total / 1e9, 3),
                     active_parameters_b=round(active / 1e9, 3) if experts > 1 else None, context_length=context)


def resolve_model(catalog: Catalog, name_or_path: str) -> ModelSpec:
    """A catalog model by name, or a model read from a `config.json` path (or its folder)."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise InputError(str(path), f"is not JSON: {error}") from None
        return model_from_hf_config(data, path.parent.name or path.stem, str(path))
    return catalog.model(name_or_path)
