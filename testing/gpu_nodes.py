"""Simulated GPU nodes for the real-cluster tests: real instance shapes, labelled as NVIDIA's GPU
Feature Discovery and a cloud label real nodes, as KWOK nodes and as Karpenter KWOK instance types.

Labels: GPU Feature Discovery sets `nvidia.com/gpu.product` (the product name with spaces as
dashes), `nvidia.com/gpu.count` and `nvidia.com/gpu.memory` (MiB) on every GPU node; clouds set
`node.kubernetes.io/instance-type`. GPU nodes usually carry the `nvidia.com/gpu` NoSchedule taint
(EKS and GKE GPU node groups add it), so only pods that tolerate it land there.
Shapes and on-demand prices: AWS EC2 instance types (us-east-1 list prices, 2025).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class InstanceShape:
    """One cloud instance type: its CPUs, memory, GPUs and on-demand price."""

    instance_type: str
    cpu: int
    memory_gib: int
    gpu_product: str | None = None  # GFD's nvidia.com/gpu.product; None: a CPU-only node
    gpu_count: int = 0
    gpu_memory_mib: int = 0
    price_per_hour: float = 0.0

    def labels(self) -> dict[str, str]:
        """The labels a cloud and GPU Feature Discovery put on a node of this shape."""
        labels = {INSTANCE_TYPE_LABEL: self.instance_type, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "type": "kwok"}
        if self.gpu_product:
            labels.update({GPU_PRODUCT_LABEL: self.gpu_product, GPU_COUNT_LABEL: str(self.gpu_count),
                           GPU_MEMORY_LABEL: str(self.gpu_memory_mib), "nvidia.com/gpu.present": "true"})
        return labels

    def resources(self) -> dict[str, str]:
        """Capacity (and allocatable) of a node of this shape."""
        resources = {"cpu": str(self.cpu), "memory": f"{self.memory_gib}Gi", "pods": "110",
                     "ephemeral-storage": "500Gi"}
        if self.gpu_count:
            resources[GPU_RESOURCE] = str(self.gpu_count)
        return resources


SHAPES: dict[str, InstanceShape] = {shape.instance_type: shape for shape in (
    InstanceShape("m5.xlarge", 4, 16, price_per_hour=0.192),
    InstanceShape("g6.xlarge", 4, 16, "NVIDIA-L4", 1, 23034, 0.8048),
    InstanceShape("g6.12xlarge", 48, 192, "NVIDIA-L4", 4, 23034, 4.6016),
    InstanceShape("g5.xlarge", 4, 16, "NVIDIA-A10G", 1, 23028, 1.006),
    InstanceShape("g5.12xlarge", 48, 192, "NVIDIA-A10G", 4, 23028, 5.672),
    InstanceShape("p4de.24xlarge", 96, 1152, "NVIDIA-A100-SXM4-80GB", 8, 81920, 40.966),
    InstanceShape("p5.48xlarge", 192, 2048, "NVIDIA-H100-80GB-HBM3", 8, 81559, 98.32),
)}


def kwok_node(name: str, shape: InstanceShape) -> dict[str, Any]:
    """A v1 Node that the KWOK controller keeps Ready (by its annotation); GPU nodes are tainted."""
    spec: dict[str, Any] = {}
    if shape.gpu_count:
        spec["taints"] = [dict(GPU_TAINT)]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                     "labels": {**shape.labels(), "kubernetes.io/hostname": name}},
        "spec": spec,
        "status": {"capacity": shape.resources(), "allocatable": shape.resources()},
    }


def karpenter_instance_types(shapes: list[InstanceShape] | None = None,
                             zone: str = "test-zone-a") -> list[dict[str, Any]]:
    """The instance-types file of Karpenter's KWOK provider (`--instance-types-file-path`): each
    shape on demand in one zone, its resources including `nvidia.com/gpu`."""
    chosen = shapes if shapes is not None else list(SHAPES.values())
    return [{
        "name": shape.instance_type,
        "offerings": [{"Price": shape.price_per_hour, "Available": True, "Requirements": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}],
        "architecture": "amd64",
        "operatingSystems": ["linux"],
        "resources": shape.resources(),
    } for shape in chosen]
