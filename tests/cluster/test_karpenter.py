"""Karpenter on the real cluster: its KWOK provider with real GPU instance shapes and on-demand
prices (melange.testing.gpu_nodes). A service with `nodePools.provider: karpenter` gets a NodePool
per option in use, Karpenter launches nodes of the right instance type for them, the pods schedule
there and become ready; after a move the dropped option's NodePool and its nodes go, and deleting
the service (while the operator runs) takes the rest."""
from __future__ import annotations

import json

import pytest

from melange.testing.gpu_nodes import karpenter_instance_types

from .conftest import wait_until
from .test_lifecycle import arena
from .test_reallocation import settled

pytestmark = pytest.mark.cluster

INSTANCE = {"l4": "g6.xlarge", "a10g": "g5.xlarge", "a100-80gb": "p4de.24xlarge", "h100": "p5.48xlarge"}
NODE_CLASS = {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"}


@pytest.fixture(scope="module")
def karpenter(cluster):
    cluster.start_karpenter(karpenter_instance_types())
    return cluster


def karpenter_service(namespace: str) -> dict:
    manifest = arena(namespace, nodePools={"provider": "karpenter", "nodeClassRef": NODE_CLASS})
    for option in manifest["spec"]["gpuOptions"]:
        option["nodeSelector"] = {"node.kubernetes.io/instance-type": INSTANCE[option["name"]]}
    return manifest


def node_pools(cluster, namespace: str) -> dict[str, dict]:
    pools = cluster.get("nodepools.karpenter.sh")["items"]
    return {p["metadata"]["name"]: p for p in pools if p["metadata"]["name"].startswith(f"{namespace}-")}


def karpenter_nodes(cluster) -> dict[str, dict]:
    """Nodes Karpenter launched, by name."""
    return {n["metadata"]["name"]: n for n in cluster.get("nodes")["items"]
            if "karpenter.sh/nodepool" in (n["metadata"].get("labels") or {})}


def test_karpenter_provisions_node_pools_and_removes_the_emptied_ones(cluster, karpenter, operator, namespace):
    manifest = karpenter_service(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}),
               "the mix on Karpenter nodes", timeout_s=180)

    pools = node_pools(cluster, namespace)
    assert sorted(pools) == [f"{namespace}-{name}-a100-80gb", f"{namespace}-{name}-l4"]
    assert pools[f"{namespace}-{name}-l4"]["spec"]["limits"] == {"nvidia.com/gpu": "1"}
    nodes = karpenter_nodes(cluster)
    pods = [p for p in cluster.get("pods", namespace=namespace)["items"] if p["metadata"]["name"].startswith(name)
            and not p["metadata"]["name"].startswith(f"{name}-router")]
    assert len(pods) == 2
    for pod in pods:
        option = pod["metadata"]["labels"]["melange.ai/option"]
        node = nodes[pod["spec"]["nodeName"]]["metadata"]["labels"]
        assert node["karpenter.sh/nodepool"] == f"{namespace}-{name}-{option}"
        assert node["node.kubernetes.io/instance-type"] == INSTANCE[option]
        assert node["karpenter.sh/capacity-type"] == "on-demand"

    cluster.kubectl("patch", "llms", name, "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"workload": {"static": {"rate": 1.0}}}}))
    wait_until(settled(cluster, name, namespace, {"l4": 1, "a10g": 1, "a100-80gb": 0, "h100": 0}),
               "the rate-1 mix on Karpenter nodes", timeout_s=180)
    wait_until(lambda: sorted(node_pools(cluster, namespace)) == [f"{namespace}-{name}-a10g", f"{namespace}-{name}-l4"],
               "the A100 NodePool deleted", timeout_s=60)
    wait_until(lambda: not any(n["metadata"]["labels"]["karpenter.sh/nodepool"] == f"{namespace}-{name}-a100-80gb"
                               for n in karpenter_nodes(cluster).values()),
               "the emptied A100 node gone", timeout_s=120)
    assert any(n["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "g5.xlarge"
               for n in karpenter_nodes(cluster).values())

    cluster.kubectl("delete", "llms", name, "-n", namespace, "--timeout=60s")
    wait_until(lambda: node_pools(cluster, namespace) == {}, "the NodePools deleted with the service", timeout_s=60)
    wait_until(lambda: not any(n["metadata"]["labels"]["karpenter.sh/nodepool"].startswith(f"{namespace}-")
                               for n in karpenter_nodes(cluster).values()),
               "the service's nodes gone", timeout_s=120)
