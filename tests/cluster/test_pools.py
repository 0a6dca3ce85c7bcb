"""Each example on the real cluster: its pools become Deployments, ReplicaSets and Pods placed by the
scheduler on nodes of their GPU type, the service reports Ready when they are, and kubectl shows the
printer columns and the Events."""
from __future__ import annotations

import pytest
import yaml

from .conftest import condition, example, llmservice, wait_until

pytestmark = pytest.mark.cluster

# GPU Feature Discovery's nvidia.com/gpu.product of each catalog GPU the examples use (NVIDIA's
# product names; an independent table, not the operator's).
GPU_PRODUCT = {"l4": "NVIDIA-L4", "a10g": "NVIDIA-A10G", "a100": "NVIDIA-A100-SXM4-80GB",
               "a100-80gb": "NVIDIA-A100-SXM4-80GB", "h100": "NVIDIA-H100-80GB-HBM3"}


def pods_of(cluster, namespace: str, deployment: str) -> list[dict]:
    """The pods of a Deployment, found through its ReplicaSets' owner references."""
    replica_sets = {rs["metadata"]["uid"] for rs in cluster.get("replicasets", namespace=namespace)["items"]
                    if any(ref["kind"] == "Deployment" and ref["name"] == deployment
                           for ref in rs["metadata"].get("ownerReferences", []))}
    return [pod for pod in cluster.get("pods", namespace=namespace)["items"]
            if any(ref["uid"] in replica_sets for ref in pod["metadata"].get("ownerReferences", []))]


def running_and_ready(pod: dict) -> bool:
    return pod["status"].get("phase") == "Running" and condition(pod, "Ready") == "True"


@pytest.mark.parametrize("file,expected", [
    ("arena-llama2-7b.yaml", {"l4": 1, "a100-80gb": 1}),  # the paper's Table 3 mix at 4 req/s
    ("llama-3-8b.yaml", None),
])
def test_pools_run_on_nodes_of_their_gpu_type_and_the_service_is_ready(cluster, operator, namespace, file, expected):
    manifest = example(file, namespace)
    name = manifest["metadata"]["name"]
    gpu_of = {option["name"]: option["gpu"].lower() for option in manifest["spec"]["gpuOptions"]}
    cluster.apply(manifest)

    service = wait_until(lambda: (s := llmservice(cluster, name, namespace)) and condition(s, "Ready") == "True" and s,
                         f"{name} Ready", timeout_s=120)
    allocation = {option: n for option, n in service["status"]["allocation"].items() if n}
    if expected is not None:
        assert allocation == expected
    assert allocation, service["status"]

    nodes = {node["metadata"]["name"]: node for node in cluster.get("nodes")["items"]}
    for option, replicas in allocation.items():
        deployment = cluster.get("deployment", f"{name}-{option}", namespace)
        owner = deployment["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("LLMService", name, service["metadata"]["uid"])
        assert deployment["spec"]["replicas"] == replicas
        assert deployment["status"].get("readyReplicas") == replicas
        pods = pods_of(cluster, namespace, f"{name}-{option}")
        assert len(pods) == replicas and all(running_and_ready(pod) for pod in pods), pods
        for pod in pods:
            labels = nodes[pod["spec"]["nodeName"]]["metadata"]["labels"]
            assert labels["nvidia.com/gpu.product"] == GPU_PRODUCT[gpu_of[option]], (option, pod["spec"]["nodeName"])
        # the EndpointSlice controller lists each pool's ready pods behind its Service
        slices = [es for es in cluster.get("endpointslices", namespace=namespace)["items"]
                  if es["metadata"]["labels"].get("kubernetes.io/service-name") == f"{name}-{option}"]
        ready_ips = sorted(address for es in slices for endpoint in es.get("endpoints") or []
                           if endpoint["conditions"].get("ready") for address in endpoint["addresses"])
        assert ready_ips == sorted(pod["status"]["podIP"] for pod in pods)
    router = cluster.get("deployment", f"{name}-router", namespace)
    assert router["status"].get("readyReplicas") == router["spec"]["replicas"] >= 1
    assert all(running_and_ready(pod) for pod in pods_of(cluster, namespace, f"{name}-router"))

    table = cluster.kubectl("get", "llms", name, "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODE", "$/H", "SAVINGS", "%", "READY", "AGE"]
    row = table[1].split()
    assert row[0] == name and row[1] == manifest["spec"].get("mode", "apply") and row[-2] == "True"
    assert float(row[2]) == pytest.approx(service["status"]["costPerHour"], abs=0.01)

    described = cluster.kubectl("describe", "llms", name, "-n", namespace).stdout
    events = described[described.index("Events:"):]
    assert "Reallocated" in events or "Allocated" in events, events


def test_a_profile_from_a_configmap_is_read_once_it_exists(cluster, operator, namespace):
    manifest = example("arena-llama2-7b.yaml", namespace)
    name = manifest["metadata"]["name"]
    a100 = next(o for o in manifest["spec"]["gpuOptions"] if o["name"] == "a100-80gb")
    profile = a100["profile"]["inline"]
    a100["profile"] = {"configMapRef": {"name": "measured-profiles", "key": "a100.yaml"}}
    manifest["spec"]["reallocation"]["interval"] = "5s"
    cluster.apply(manifest)
    # The ConfigMap is missing: the spec cannot be read, nothing is deployed, status says which field.
    refused = wait_until(lambda: (s := llmservice(cluster, name, namespace)) and condition(s, "InvalidSpec") == "True"
                         and s, "InvalidSpec", timeout_s=60)
    message = next(c["message"] for c in refused["status"]["conditions"] if c["type"] == "InvalidSpec")
    assert "measured-profiles" in message, message
    assert cluster.get("deployments", namespace=namespace)["items"] == []

    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "measured-profiles",
                                                                         "namespace": namespace},
                   "data": {"a100.yaml": yaml.safe_dump(profile)}})
    service = wait_until(lambda: (s := llmservice(cluster, name, namespace)) and condition(s, "Ready") == "True"
                         and s, f"{name} Ready", timeout_s=120)
    assert {k: v for k, v in service["status"]["allocation"].items() if v} == {"l4": 1, "a100-80gb": 1}
    assert condition(service, "InvalidSpec") == "False"
