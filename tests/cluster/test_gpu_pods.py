"""vLLM pools on real GPU nodes: each option's pods on its own GPU type without a nodeSelector, sized
(Burstable, not BestEffort), with a model cache, one context length, a graceful stop, a disruption
budget, rollouts that keep the ready replicas the routing counts on, and a PodMonitor where the
Prometheus Operator's CRDs are installed."""
from __future__ import annotations

import json
import time

import kubernetes
import pytest

from melange.operator.kube import Cluster

from ..operator.test_make_before_break import ready_pods
from .conftest import POD_MONITOR_LABELS, TABLE3_RATE_4, arena, settled, wait_until

pytestmark = pytest.mark.cluster

# The GFD product label of each Arena option's GPU (the KWOK shapes of melange.testing.gpu_nodes).
PRODUCT = {"l4": "NVIDIA-L4", "a10g": "NVIDIA-A10G", "a100-80gb": "NVIDIA-A100-SXM4-80GB",
           "h100": "NVIDIA-H100-80GB-HBM3"}
EVERY_TYPE = {"l4": 1, "a10g": 1, "a100-80gb": 1, "h100": 1}


def every_type_without_selectors(namespace: str) -> dict:
    manifest = arena(namespace, reallocation={"targetUtilisation": 1.0})
    for option in manifest["spec"]["gpuOptions"]:
        option.pop("nodeSelector", None)
        option["minReplicas"], option["maxReplicas"] = 1, 1
    return manifest


def pool_pods(cluster, namespace: str, name: str) -> list[dict]:
    return [p for p in cluster.get("pods", namespace=namespace)["items"]
            if p["metadata"]["labels"].get("melange.ai/option") and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["labels"].get("melange.ai/service") == name]


def test_each_option_runs_on_its_own_gpu_type_sized_cached_and_stopping_gracefully(cluster, operator, namespace):
    manifest = every_type_without_selectors(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, EVERY_TYPE), "a pool of every type", timeout_s=120)
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in cluster.get("nodes")["items"]}
    pods = pool_pods(cluster, namespace, name)
    assert sorted(p["metadata"]["labels"]["melange.ai/option"] for p in pods) == sorted(EVERY_TYPE)
    for pod in pods:
        option = pod["metadata"]["labels"]["melange.ai/option"]
        node = nodes[pod["spec"]["nodeName"]]
        assert node.get("nvidia.com/gpu.product") == PRODUCT[option], (option, pod["spec"]["nodeName"])
        assert pod["status"]["qosClass"] == "Burstable"  # cpu and memory requested: not first to be evicted
        container = pod["spec"]["containers"][0]
        requests = container["resources"]["requests"]
        assert {"cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"} <= set(requests)
        cache = next(v for v in pod["spec"]["volumes"] if v["name"] == "model-cache")
        assert cache["emptyDir"]["sizeLimit"] == requests["ephemeral-storage"]
        assert {"name": "HF_HOME", "value": "/models/huggingface"} in container["env"]
        args = container["args"]
        assert args[args.index("--max-model-len") + 1] == "4000"  # the Arena grid: 2000 in + 2000 out
        assert pod["spec"]["enableServiceLinks"] is False
        # 2000 output tokens at 120 ms each finish before the pod is killed
        assert pod["spec"]["terminationGracePeriodSeconds"] >= 2000 * 0.120
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    budgets = {b["metadata"]["name"]: b for b in cluster.get("poddisruptionbudgets", namespace=namespace)["items"]}
    assert sorted(budgets) == sorted([f"{name}-{o}" for o in EVERY_TYPE] + [f"{name}-router"])
    wait_until(lambda: all((cluster.get("poddisruptionbudget", b, namespace).get("status") or {})
                           .get("currentHealthy") == 1 for b in budgets), "the budgets to count the pods")


def table3_service(cluster, namespace: str) -> tuple[dict, str]:
    """The Arena example applied and settled on the paper's Table 3 mix (1 x L4 + 1 x A100); its manifest
    and name."""
    manifest = arena(namespace, reallocation={"targetUtilisation": 1.0})
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the Table 3 mix", timeout_s=120)
    return manifest, name


def test_a_template_change_rolls_a_pool_without_losing_a_ready_replica(cluster, operator, namespace):
    manifest, name = table3_service(cluster, namespace)
    manifest["spec"]["serving"] = {"args": ["--enable-prefix-caching"]}
    cluster.apply(manifest)
    lowest, rolled, started = {}, False, time.monotonic()
    while time.monotonic() - started < 30 and not rolled:
        deployments = {d["metadata"]["name"]: d for d in cluster.get("deployments", namespace=namespace)["items"]}
        for option in ("l4", "a100-80gb"):
            deployment = deployments[f"{name}-{option}"]
            lowest[option] = min(lowest.get(option, 99), ready_pods(deployment))
        rolled = all("--enable-prefix-caching" in deployments[f"{name}-{o}"]["spec"]["template"]["spec"]
                     ["containers"][0]["args"] and (deployments[f"{name}-{o}"].get("status") or {})
                     .get("updatedReplicas") == 1 and ready_pods(deployments[f"{name}-{o}"]) == 1
                     and (deployments[f"{name}-{o}"].get("status") or {}).get("replicas") == 1
                     for o in ("l4", "a100-80gb"))
    assert rolled, "the pools rolled to the new args"
    assert lowest == {"l4": 1, "a100-80gb": 1}, lowest  # a new pod was ready before the old one went


def test_serving_args_that_would_break_the_operator_are_refused_and_change_nothing(cluster, operator, namespace):
    manifest, name = table3_service(cluster, namespace)
    before = {d["metadata"]["name"]: d["metadata"]["generation"]
              for d in cluster.get("deployments", namespace=namespace)["items"]}
    manifest["spec"]["serving"] = {"args": ["--disable-log-stats"]}
    cluster.apply(manifest)

    def refused():
        service = cluster.get("llmservice", name, namespace)
        found = [c for c in (service.get("status") or {}).get("conditions") or []
                 if c["type"] == "InvalidSpec" and c["status"] == "True"]
        return found[0] if found else None
    invalid = wait_until(refused, "InvalidSpec", timeout_s=60)
    assert "spec.serving.args[0]" in invalid["message"] and "--disable-log-stats" in invalid["message"]
    time.sleep(2)
    after = {d["metadata"]["name"]: d["metadata"]["generation"]
             for d in cluster.get("deployments", namespace=namespace)["items"]}
    assert after == before  # nothing was rolled out with the metrics turned off


def selected_pods(cluster, namespace: str, selector: dict) -> dict[str, dict]:
    """The pods of a namespace a matchLabels selector picks, as the API server selects them."""
    labels = ",".join(f"{key}={value}" for key, value in selector["matchLabels"].items())
    found = cluster.kubectl("get", "pods", "-n", namespace, "-l", labels, "-o", "json").stdout
    return {p["metadata"]["name"]: p for p in json.loads(found)["items"] if not p["metadata"].get("deletionTimestamp")}


def test_a_pod_monitor_has_the_prometheus_operator_scrape_every_pool_and_the_router(cluster, operator, namespace):
    manifest = arena(namespace)
    other = arena(namespace)
    other["metadata"]["name"] = "other"
    name = manifest["metadata"]["name"]
    cluster.apply([manifest, other])
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the Table 3 mix", timeout_s=120)
    wait_until(settled(cluster, "other", namespace, TABLE3_RATE_4), "the other service's mix", timeout_s=120)
    monitor = wait_until(lambda: next((m for m in cluster.get("podmonitors", namespace=namespace)["items"]
                                       if m["metadata"]["name"] == name), None), "the service's PodMonitor")
    assert monitor["metadata"]["labels"].items() >= POD_MONITOR_LABELS.items()  # what kube-prometheus-stack selects
    uid = cluster.get("llmservice", name, namespace)["metadata"]["uid"]
    assert [(r["kind"], r["uid"]) for r in monitor["metadata"]["ownerReferences"]] == [("LLMService", uid)]
    # Every pod of this service, pools and router, and none of the other service's: 1 L4, 1 A100, the router.
    pods = selected_pods(cluster, namespace, monitor["spec"]["selector"])
    components = sorted(p["metadata"]["labels"].get("melange.ai/option") or p["metadata"]["labels"]
                        ["app.kubernetes.io/component"] for p in pods.values())
    assert components == ["a100-80gb", "l4", "router"]
    assert all(p["metadata"]["labels"]["melange.ai/service"] == name for p in pods.values())
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for pod in pods.values():
        ports = {p.get("name"): p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        annotations = pod["metadata"]["annotations"]
        assert endpoint["port"] in ports  # the named port the Prometheus Operator scrapes
        # the same port as the annotations, which stay for annotation-driven Prometheus setups
        assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"],
                annotations["prometheus.io/path"]) == ("true", str(ports[endpoint["port"]]), "/metrics")
    cluster.kubectl("delete", "llmservice", name, "-n", namespace, "--wait=false")
    wait_until(lambda: [m["metadata"]["name"] for m in cluster.get("podmonitors", namespace=namespace)["items"]]
               == ["other"], "the garbage collector to delete the PodMonitor with its service")


def test_the_operator_asks_the_api_server_whether_the_pod_monitor_crd_is_installed(cluster):
    shell = Cluster(kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    assert shell.serves_pod_monitors()
    assert not shell.serves("monitoring.coreos.com", "v1", "probes")  # the group is served, not this kind
    assert not shell.serves("nothing.example.com", "v1", "things")  # no such group: a 404
