"""The planner's objects: what a vLLM operator would write by hand, valid for a recent Kubernetes."""
from __future__ import annotations

import json

import kubernetes_validate
import pytest

from melange.operator.core.planner import (HASH_ANNOTATION, Images, Owner, PodMonitorSettings, content_hash,
                                           nodepool_gpu_limit, nodepool_name,
                                           plan, pool_url)
from melange.operator.core.spec import parse_spec
from melange.solver.profiles import Profile, Slo
from melange.solver.buckets import BucketGrid

OWNER = Owner("chat", "llm", "1234-abcd")
GRID = BucketGrid((100,), (100,))


def profile(gpu: str, tp: int = 1, provenance: dict | None = None) -> Profile:
    return Profile("m", gpu, GRID, ((1.0,),), Slo(tpot_ms=100), tp, provenance or {"source": "measured"})


def spec(**overrides):
    data = {"model": "meta-llama/Llama-3.1-8B", "slo": {"tpotMs": 100}, "catalogModel": "llama-3-8b",
            "gpuOptions": [{"name": "l4", "gpu": "l4", "nodeSelector": {"gpu": "l4"},
                            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]},
                           {"name": "h100x2", "gpu": "h100", "gpusPerReplica": 2},
                           {"name": "a10g", "gpu": "a10g"}],
            "workload": {"static": {"rate": 1, "distribution": [[1]]}},
            "serving": {"args": ["--enable-prefix-caching"], "env": [{"name": "HF_HOME", "value": "/cache"}],
                        "resources": {"limits": {"memory": "64Gi"}}}}
    data.update(overrides)
    return parse_spec(data)


PROFILES = {"l4": profile("L4", provenance={"source": "estimated", "constants": {"max_num_seqs": 256,
                                                                                 "gpu_memory_utilization": 0.9}}),
            "h100x2": profile("H100", 2), "a10g": profile("A10G")}
TABLE = {"grid": {"input_edges": [100], "output_edges": [100]}, "pools": {}, "input_weights": [{"l4": 1.0}]}


def objects(**overrides) -> dict[tuple[str, str], dict]:
    planned = plan(OWNER, spec(**overrides), {"l4": 3, "h100x2": 1, "a10g": 0}, PROFILES, TABLE, Images())
    return {(o["kind"], o["metadata"]["name"]): o for o in planned}


def test_one_pool_per_option_in_use_and_the_router_in_front():
    assert sorted(objects()) == [("ConfigMap", "chat-router-acks"), ("ConfigMap", "chat-routing"), ("Deployment", "chat-h100x2"), ("Deployment", "chat-l4"),
                                 ("Deployment", "chat-router"), ("PodDisruptionBudget", "chat-h100x2"),
                                 ("PodDisruptionBudget", "chat-l4"), ("PodDisruptionBudget", "chat-router"),
                                 ("Role", "chat-router"), ("RoleBinding", "chat-router"),
                                 ("Service", "chat"), ("Service", "chat-h100x2"), ("Service", "chat-l4"),
                                 ("ServiceAccount", "chat-router")]


@pytest.mark.parametrize("key", sorted(objects()), ids=lambda k: f"{k[0]}/{k[1]}")
def test_every_object_is_valid_and_owned(key):
    obj = objects()[key]
    kubernetes_validate.validate(obj, "1.33", strict=True)
    meta = obj["metadata"]
    assert meta["namespace"] == "llm"
    assert meta["ownerReferences"] == [{"apiVersion": "melange.ai/v1alpha1", "kind": "LLMService", "name": "chat",
                                        "uid": "1234-abcd", "controller": True, "blockOwnerDeletion": True}]
    assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
            "app.kubernetes.io/managed-by"} <= set(meta["labels"])
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "melange-operator"
    assert meta["annotations"][HASH_ANNOTATION] == content_hash(obj)


def test_a_vllm_pool_is_what_one_would_write_by_hand():
    l4, h100 = objects()[("Deployment", "chat-l4")], objects()[("Deployment", "chat-h100x2")]
    assert l4["spec"]["replicas"] == 3 and h100["spec"]["replicas"] == 1
    container = l4["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    args = container["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B"
    assert args[args.index("--served-model-name") + 1] == "meta-llama/Llama-3.1-8B"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--max-num-seqs") + 1] == "256"  # the estimate's serving settings are passed on
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert args[args.index("--max-model-len") + 1] == "200"  # the grid's longest input + output
    assert args[-1] == "--enable-prefix-caching"
    assert container["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "1"}
    assert container["env"] == [{"name": "HF_HOME", "value": "/cache"}]  # the user's entry replaces ours
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200  # a model load may take 20 min
    pod = l4["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert pod["spec"]["nodeSelector"] == {"gpu": "l4"}
    assert {"key": "spot", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["model-cache"]  # no /dev/shm without tensor parallelism
    assert pod["spec"]["enableServiceLinks"] is False
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert l4["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    h100_container = h100["spec"]["template"]["spec"]["containers"][0]
    assert h100_container["args"][h100_container["args"].index("--tensor-parallel-size") + 1] == "2"
    assert h100_container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert h100_container["volumeMounts"] == [{"name": "model-cache", "mountPath": "/models"},
                                              {"name": "dshm", "mountPath": "/dev/shm"}]
    assert h100["spec"]["template"]["spec"]["volumes"][1]["emptyDir"]["medium"] == "Memory"


def test_the_router_watches_its_table_and_pools_as_its_own_service_account():
    planned = objects()
    router = planned[("Deployment", "chat-router")]["spec"]["template"]["spec"]
    assert router["serviceAccountName"] == "chat-router" and "volumes" not in router
    args = router["containers"][0]["args"]
    assert args[args.index("--table-configmap") + 1] == "chat-routing"
    assert args[args.index("--discover-service") + 1] == "chat"
    assert args[args.index("--acknowledge-configmap") + 1] == "chat-router-acks"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in router["containers"][0]["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    # the Role grants reading the routing ConfigMap, writing the acknowledgements (each by name) and
    # reading the EndpointSlices, nothing else
    role = planned[("Role", "chat-router")]
    assert [(r["apiGroups"], r["resources"], sorted(r["verbs"]), r.get("resourceNames")) for r in role["rules"]] == [
        ([""], ["configmaps"], ["list", "watch"], ["chat-routing"]),
        ([""], ["configmaps"], ["patch"], ["chat-router-acks"]),
        (["discovery.k8s.io"], ["endpointslices"], ["list", "watch"], None)]
    binding = planned[("RoleBinding", "chat-router")]
    assert binding["roleRef"]["name"] == "chat-router"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-router", "namespace": "llm"}]
    assert json.loads(planned[("ConfigMap", "chat-routing")]["data"]["routing.json"]) == TABLE
    assert pool_url(OWNER, "l4") == "http://chat-l4.llm.svc:8000"
    assert planned[("Service", "chat")]["spec"]["selector"]["app.kubernetes.io/component"] == "router"
    assert planned[("Service", "chat-l4")]["spec"]["selector"] == {"melange.ai/service": "chat", "melange.ai/option": "l4"}
    # the pools' Services carry the labels the router selects their EndpointSlices by (copied to the slices)
    assert planned[("Service", "chat-l4")]["metadata"]["labels"].items() >= {
        "melange.ai/service": "chat", "app.kubernetes.io/component": "pool", "melange.ai/option": "l4"}.items()


KARPENTER = {"provider": "karpenter", "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"}}


def node_pools(planned: dict) -> dict[str, dict]:
    """The planned NodePools by option."""
    return {o["metadata"]["labels"]["melange.ai/option"]: o for (kind, _), o in planned.items() if kind == "NodePool"}


def test_karpenter_node_pools_follow_the_allocation():
    planned = objects(nodePools=KARPENTER)
    pools = node_pools(planned)
    assert sorted(pools) == ["h100x2", "l4"]
    l4, h100 = pools["l4"], pools["h100x2"]
    assert l4["metadata"]["name"] == nodepool_name(OWNER, "l4")
    assert l4["apiVersion"] == "karpenter.sh/v1" and "namespace" not in l4["metadata"]
    assert l4["metadata"]["labels"]["melange.ai/namespace"] == "llm"
    assert l4["spec"]["template"]["metadata"]["labels"] == {"melange.ai/service": "chat", "melange.ai/option": "l4",
                                                            "melange.ai/namespace": "llm"}
    # No node size known to the planner: the pods' GPUs (3 x 1 and 1 x 2).
    assert l4["spec"]["limits"] == {"nvidia.com/gpu": "3"} and h100["spec"]["limits"] == {"nvidia.com/gpu": "2"}
    requirements = {r["key"]: r["values"] for r in h100["spec"]["template"]["spec"]["requirements"]}
    assert requirements["karpenter.k8s.aws/instance-gpu-name"] == ["h100"]
    assert requirements["karpenter.sh/capacity-type"] == ["on-demand"]
    assert {r["key"]: r["values"] for r in l4["spec"]["template"]["spec"]["requirements"]}["gpu"] == ["l4"]
    assert l4["spec"]["template"]["spec"]["nodeClassRef"] == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                                              "name": "gpu"}
    pod = planned[("Deployment", "chat-l4")]["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["karpenter.sh/nodepool"] == nodepool_name(OWNER, "l4")


def test_node_pool_limits_are_whole_instances():
    """3 L4 replicas on 1-GPU g6.xlarge: 3 GPUs; one 2-GPU H100 replica on an 8-GPU p5.48xlarge: 8, so
    that Karpenter may launch the instance at all."""
    planned = plan(OWNER, spec(nodePools=KARPENTER), {"l4": 3, "h100x2": 1}, PROFILES, TABLE, Images(),
                   gpus_per_node={"l4": 1, "h100x2": 8, "a10g": None})
    pools = node_pools({(o["kind"], o["metadata"]["name"]): o for o in planned})
    assert pools["l4"]["spec"]["limits"] == {"nvidia.com/gpu": "3"}
    assert pools["h100x2"]["spec"]["limits"] == {"nvidia.com/gpu": "8"}


@pytest.mark.parametrize("replicas,gpus_per_replica,gpus_per_node,limit", [
    (1, 1, 8, 8),      # one A100 replica: a whole p4de.24xlarge
    (8, 1, 8, 8),
    (9, 1, 8, 16),     # a second node
    (4, 2, 8, 8),      # 4 replicas of 2 GPUs fill one node
    (5, 3, 8, 24),     # 3-GPU replicas: 2 per node (2 GPUs idle each), 5 replicas on 3 nodes
    (3, 1, 1, 3),      # one GPU per node: the pods' GPUs
    (3, 2, None, 6),   # node size unknown: the pods' GPUs
])
def test_the_gpu_limit_rounds_up_to_whole_nodes(replicas, gpus_per_replica, gpus_per_node, limit):
    assert nodepool_gpu_limit(replicas, gpus_per_replica, gpus_per_node) == limit


def test_node_pool_names_are_short_labels_that_never_collide():
    names = {nodepool_name(Owner(service, namespace, "u"), option)
             for namespace, service, option in [("a-b", "c", "d"), ("a", "b-c", "d"), ("a", "b", "c-d")]}
    assert len(names) == 3 and all(n.startswith(("a-b-c-d-")) for n in names)
    long = Owner("s" * 30, "n" * 63, "u")
    first, second = nodepool_name(long, "o" * 24), nodepool_name(long, "o" * 23 + "p")
    assert first != second and len(first) == len(second) == 63
    for name in (first, second, *names):
        assert len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert nodepool_name(Owner("chat", "llm", "other-uid"), "l4") == nodepool_name(OWNER, "l4")  # stable


def test_node_pool_disruption_has_safe_defaults_and_follows_the_spec():
    """Defaults: nodes never expire (Karpenter v1's expiry drains a serving node without a replacement
    first), empty nodes go after 5 minutes, one node of the pool at a time."""
    pool = node_pools(objects(nodePools=KARPENTER))["l4"]
    assert pool["spec"]["template"]["spec"]["expireAfter"] == "Never"
    assert pool["spec"]["disruption"] == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m",
                                          "budgets": [{"nodes": "1"}]}
    budgets = [{"nodes": "0", "schedule": "0 9 * * mon-fri", "duration": "8h"}, {"nodes": "20%", "reasons": ["Empty"]}]
    pool = node_pools(objects(nodePools={**KARPENTER, "disruption": {"expireAfter": "720h", "consolidateAfter": "30m",
                                                                     "budgets": budgets}}))["l4"]
    assert pool["spec"]["template"]["spec"]["expireAfter"] == "720h"
    assert pool["spec"]["disruption"] == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30m",
                                          "budgets": budgets}


def test_the_hash_changes_with_content_only():
    first, again = objects(), objects()
    assert all(first[k]["metadata"]["annotations"][HASH_ANNOTATION] == again[k]["metadata"]["annotations"][HASH_ANNOTATION]
               for k in first)
    changed = plan(OWNER, spec(), {"l4": 4, "h100x2": 1}, PROFILES, TABLE, Images())
    hashes = {o["metadata"]["name"] + o["kind"]: o["metadata"]["annotations"][HASH_ANNOTATION] for o in changed}
    assert hashes["chat-l4Deployment"] != first[("Deployment", "chat-l4")]["metadata"]["annotations"][HASH_ANNOTATION]
    assert hashes["chat-h100x2Deployment"] == first[("Deployment", "chat-h100x2")]["metadata"]["annotations"][HASH_ANNOTATION]


def test_a_pod_monitor_is_planned_only_where_asked_and_selects_the_services_pods():
    without = plan(OWNER, spec(), {"l4": 1, "a10g": 2}, PROFILES, TABLE)
    assert "PodMonitor" not in {o["kind"] for o in without}
    settings = PodMonitorSettings((("release", "kps"), ("app.kubernetes.io/managed-by", "someone-else")), "15s")
    objects = plan(OWNER, spec(), {"l4": 1, "a10g": 2}, PROFILES, TABLE, monitoring=settings)
    [monitor] = [o for o in objects if o["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (monitor["metadata"]["name"], monitor["metadata"]["namespace"]) == ("chat", "llm")
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    labels = monitor["metadata"]["labels"]
    # the Prometheus's label, and ours win over a clash (the operator finds what it owns by them)
    assert labels["release"] == "kps" and labels["app.kubernetes.io/managed-by"] == "melange-operator"
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    selector = monitor["spec"]["selector"]["matchLabels"]
    pods = {o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] == "Deployment"}
    assert sorted(pods) == ["chat-a10g", "chat-l4", "chat-router"]
    for name, template in pods.items():
        assert selector.items() <= template["metadata"]["labels"].items(), name
        assert "http" in {p["name"] for p in template["spec"]["containers"][0]["ports"]}, name
    plain = plan(OWNER, spec(), {"l4": 1}, PROFILES, TABLE, monitoring=PodMonitorSettings())
    [endpoint] = next(o for o in plain if o["kind"] == "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert "interval" not in endpoint  # the Prometheus's own
