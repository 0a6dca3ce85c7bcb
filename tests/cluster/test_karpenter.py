"""Karpenter on the real cluster: its KWOK provider with real GPU instance shapes and on-demand
prices (melange.testing.gpu_nodes). A service with `nodePools.provider: karpenter` gets a NodePool
per option in use, limited to whole instances of the option's type, Karpenter launches nodes of that
type for them (a p4de.24xlarge with 8 A100s for one A100 replica), the pods schedule there and become
ready; after a move the dropped option's NodePool and its nodes go, switching the provider off
removes the NodePools, and deleting the service (while the operator runs) takes the rest."""
from __future__ import annotations

import json

import pytest

from melange.testing.gpu_nodes import SHAPES, karpenter_instance_types

from .conftest import arena, llmservice, settled, wait_until

pytestmark = pytest.mark.cluster

INSTANCE = {"l4": "g6.xlarge", "a10g": "g5.xlarge", "a100-80gb": "p4de.24xlarge", "h100": "p5.48xlarge"}
NODE_CLASS = {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": "default"}


@pytest.fixture(scope="module")
def karpenter(cluster):
    cluster.start_karpenter(karpenter_instance_types())
    return cluster


def karpenter_service(namespace: str) -> dict:
    """The Arena example on L4 and A10G at 1 req/s (the paper's Table 3: 1 x L4 + 1 x A10G), each
    option on its one-GPU instance type."""
    manifest = arena(namespace, nodePools={"provider": "karpenter", "nodeClassRef": NODE_CLASS})
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] in ("l4", "a10g")]
    manifest["spec"]["workload"]["static"]["rate"] = 1.0
    for option in manifest["spec"]["gpuOptions"]:
        option["nodeSelector"] = {"node.kubernetes.io/instance-type": INSTANCE[option["name"]]}
    return manifest


def node_pools(cluster, namespace: str, name: str) -> dict[str, dict]:
    """The service's NodePools by option (found by the labels the operator puts on them)."""
    pools = cluster.get("nodepools.karpenter.sh")["items"]
    return {labels["melange.ai/option"]: p for p in pools
            if (labels := p["metadata"].get("labels") or {}).get("melange.ai/namespace") == namespace
            and labels.get("melange.ai/service") == name}


def karpenter_nodes(cluster, name: str, option: str | None = None) -> dict[str, dict]:
    """Nodes Karpenter launched for the service's NodePools (for one option's when given), by name:
    the NodePool template's labels (`melange.ai/service`, `melange.ai/option`) are on its nodes."""
    return {n["metadata"]["name"]: n for n in cluster.get("nodes")["items"]
            if "karpenter.sh/nodepool" in (labels := n["metadata"].get("labels") or {})
            and labels.get("melange.ai/service") == name and option in (None, labels.get("melange.ai/option"))}


def nodes_match(cluster, namespace: str, name: str, mix: dict[str, int]) -> bool:
    """One NodePool per option in use, limited to whole instances of its type, and exactly as many Ready
    nodes of the option's instance type as its replicas fill; none for options at zero."""
    pools = node_pools(cluster, namespace, name)
    for option, count in mix.items():
        pool = pools.get(option)
        mine = list(karpenter_nodes(cluster, name, option).values())
        if count == 0:
            if pool is not None or mine:
                return False
            continue
        per_node = int(SHAPES[INSTANCE[option]].gpu_count)
        nodes = -(-count // per_node)
        if pool is None or pool["spec"]["limits"] != {"nvidia.com/gpu": str(nodes * per_node)} or len(mine) != nodes:
            return False
        if any(n["metadata"]["labels"]["node.kubernetes.io/instance-type"] != INSTANCE[option] for n in mine):
            return False
    return True


def ready_condition(cluster, namespace: str, name: str) -> str:
    """The service's Ready condition as one line (for failure messages)."""
    service = llmservice(cluster, name, namespace) or {}
    ready = next((c for c in (service.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
    return f"Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')}"


def test_karpenter_provisions_node_pools_and_removes_the_emptied_ones(cluster, karpenter, operator, namespace):
    manifest = karpenter_service(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    table3 = {"l4": 1, "a10g": 1}
    wait_until(settled(cluster, name, namespace, table3), "the mix on Karpenter nodes", timeout_s=180)
    wait_until(lambda: nodes_match(cluster, namespace, name, table3), "a node per replica", timeout_s=60)
    pool_names = {o: p["metadata"]["name"] for o, p in node_pools(cluster, namespace, name).items()}
    nodes = karpenter_nodes(cluster, name)
    pods = [p for p in cluster.get("pods", namespace=namespace)["items"]
            if p["metadata"]["labels"].get("melange.ai/option") in table3]
    assert len(pods) == 2
    for pod in pods:
        option = pod["metadata"]["labels"]["melange.ai/option"]
        labels = nodes[pod["spec"]["nodeName"]]["metadata"]["labels"]
        assert labels["karpenter.sh/nodepool"] == pool_names[option]
        assert labels["node.kubernetes.io/instance-type"] == INSTANCE[option]
        assert labels["karpenter.sh/capacity-type"] == "on-demand"

    # A lower rate needs fewer GPUs: a pool empties, and its NodePool and node go.
    cluster.kubectl("patch", "llms", name, "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"workload": {"static": {"rate": 0.5}}}}))

    def moved():
        status = (llmservice(cluster, name, namespace) or {}).get("status") or {}
        mix = status.get("allocation") or {}
        return mix if mix != table3 and not status.get("move") and 0 in mix.values() else None
    mix = wait_until(moved, "a move to a smaller mix", timeout_s=120)
    wait_until(settled(cluster, name, namespace, mix), f"the mix {mix}", timeout_s=120)
    wait_until(lambda: nodes_match(cluster, namespace, name, mix), "the emptied pool's NodePool and node gone",
               timeout_s=120)

    # Up to 2 req/s: the pool that stayed grows or the emptied one returns; NodePools follow.
    cluster.kubectl("patch", "llms", name, "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"workload": {"static": {"rate": 2.0}}}}))

    def grown():
        status = (llmservice(cluster, name, namespace) or {}).get("status") or {}
        found = status.get("allocation") or {}
        return found if sum(found.values()) > sum(mix.values()) and not status.get("move") else None
    bigger = wait_until(grown, "a move to a larger mix", timeout_s=120)
    wait_until(settled(cluster, name, namespace, bigger), f"the mix {bigger}", timeout_s=120)
    wait_until(lambda: nodes_match(cluster, namespace, name, bigger), "NodePools and nodes for the larger mix",
               timeout_s=120)

    cluster.kubectl("delete", "llms", name, "-n", namespace, "--timeout=60s")
    wait_until(lambda: node_pools(cluster, namespace, name) == {}, "the NodePools deleted with the service",
               timeout_s=60)
    wait_until(lambda: karpenter_nodes(cluster, name) == {}, "the service's nodes gone", timeout_s=120)


def test_an_option_on_eight_gpu_instances_gets_a_whole_node(cluster, karpenter, operator, namespace):
    """The Arena example at 4 req/s on L4 and A100-80GB: the paper's Table 3 mix, 1 x L4 + 1 x A100.
    AWS sells the A100-80GB only 8 per node (p4de.24xlarge): the A100 pool's NodePool must admit a whole
    instance, Karpenter's KWOK provider launches one p4de.24xlarge and the A100 pod becomes ready on it."""
    manifest = arena(namespace, nodePools={"provider": "karpenter", "nodeClassRef": NODE_CLASS})
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] in ("l4", "a100-80gb")]
    for option in manifest["spec"]["gpuOptions"]:
        option["nodeSelector"] = {"node.kubernetes.io/instance-type": INSTANCE[option["name"]]}
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    table3 = {"l4": 1, "a100-80gb": 1}

    def a100_node():
        nodes = list(karpenter_nodes(cluster, name, "a100-80gb").values())
        return nodes[0] if nodes else None
    try:
        node = wait_until(a100_node, "Karpenter to launch a p4de.24xlarge for the A100 pool", timeout_s=120)
    except AssertionError as error:
        limits = {o: p["spec"].get("limits") for o, p in node_pools(cluster, namespace, name).items()}
        raise AssertionError(f"{error}\nNodePool limits: {limits}\n{ready_condition(cluster, namespace, name)}") \
            from None
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "p4de.24xlarge"
    wait_until(settled(cluster, name, namespace, table3), "the mix ready on Karpenter nodes", timeout_s=180)
    wait_until(lambda: nodes_match(cluster, namespace, name, table3), "one node per pool", timeout_s=60)
    pods = [p for p in cluster.get("pods", namespace=namespace)["items"]
            if p["metadata"]["labels"].get("melange.ai/option") == "a100-80gb"]
    assert [p["spec"]["nodeName"] for p in pods] == [node["metadata"]["name"]]
    pools = node_pools(cluster, namespace, name)
    assert all(len(p["metadata"]["name"]) <= 63 for p in pools.values())
    assert pools["a100-80gb"]["spec"]["template"]["spec"]["expireAfter"] == "Never"  # the safe default
    assert pools["a100-80gb"]["spec"]["disruption"]["budgets"] == [{"nodes": "1"}]

    # Off Karpenter: the NodePools it left behind go, with their nodes; the pools run on the cluster's
    # own GPU nodes (KWOK nodes of the same instance types).
    cluster.kubectl("patch", "llms", name, "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"nodePools": {"provider": "none"}}}))
    wait_until(lambda: node_pools(cluster, namespace, name) == {}, "the NodePools deleted after the provider change",
               timeout_s=60)
    wait_until(lambda: karpenter_nodes(cluster, name) == {}, "their nodes gone", timeout_s=120)
    wait_until(settled(cluster, name, namespace, table3), "the mix on the cluster's own nodes", timeout_s=180)
    service = llmservice(cluster, name, namespace) or {}
    assert "nodePools" not in (service.get("status") or {})
