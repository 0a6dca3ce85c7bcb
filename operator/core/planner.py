"""From an allocation to the Kubernetes objects that run it, as plain dicts (no API calls).

Per GPU option in use: a vLLM Deployment, a Service and a PodDisruptionBudget (`<service>-<option>`),
and with Karpenter a `karpenter.sh/v1` NodePool whose GPU limit is the whole instances the replicas fill.
In front: the routing ConfigMap, the router Deployment, its PodDisruptionBudget and the Service clients
call (`<service>`); where the Prometheus Operator runs, a PodMonitor for all of them. Every object carries the owner
reference (NodePools, cluster-scoped, cannot: they carry labels and are deleted explicitly), the
`app.kubernetes.io/*` labels and a hash of its content, so an unchanged object is never written.

vLLM flags follow the production-stack chart's shape (`vllm serve MODEL --host --port
--tensor-parallel-size ...`, a memory-backed /dev/shm for tensor parallelism, probes on /health),
github.com/vllm-project/production-stack helm/templates/deployment-vllm-multi.yaml.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melange.operator.core.pods import PRESTOP_S, PodShape, pod_shape
from melange.operator.core.spec import GpuOptionSpec, ServiceSpec
from melange.solver.routing import TABLE_KEY
from melange.solver.profiles import Profile
from melange.solver.profiling.catalog import Catalog

GROUP, VERSION, KIND = "melange.ai", "v1alpha1", "LLMService"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = "melange-operator"
SERVICE_LABEL = f"{GROUP}/service"
OPTION_LABEL = f"{GROUP}/option"
HASH_ANNOTATION = f"{GROUP}/spec-hash"
# On an object others write into (the named field): applied again only when its desired content changes.
WRITTEN_BY_OTHERS = f"{GROUP}/written-by-others"
ROUTER_PORT = 8080
SERVICE_PORT = 8000
GPU_RESOURCE = "nvidia.com/gpu"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
NAMESPACE_LABEL = f"{GROUP}/namespace"
NODEPOOL_NAME_MAX = 63  # a label value: Karpenter labels each node with its NodePool's name
NODEPOOL_HASH_CHARS = 10
AWS_GPU_NAME_LABEL = "karpenter.k8s.aws/instance-gpu-name"
# vLLM serving settings a profile may record (provenance.serving or the estimator's constants),
# passed to `vllm serve` so that what runs is what was planned.
# (--max-model-len is not among them: every pool gets the one the grid needs, see core/pods.py.)
SERVING_FLAGS = {"max_num_seqs": "--max-num-seqs", "gpu_memory_utilization": "--gpu-memory-utilization"}
PROGRESS_DEADLINE_S = 2400  # above the startup probe's 30 min, plus time to get a node


@dataclass(frozen=True)
class Owner:
    """The LLMService the objects belong to."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class PodMonitorSettings:
    """A Prometheus Operator PodMonitor per service (kube-prometheus-stack ignores `prometheus.io/*`
    annotations): extra labels its Prometheus selects PodMonitors by (kube-prometheus-stack's default:
    `release: <its release name>`) and the scrape interval (None: the Prometheus's own)."""

    labels: tuple[tuple[str, str], ...] = ()
    interval: str | None = None


@dataclass(frozen=True)
class Images:
    """Defaults from the operator's flags, used where the spec names no image."""

    vllm: str = "vllm/vllm-openai:v0.11.0"
    router: str = "ghcr.io/melange-ai/melange-operator:0.1.0"


def pool_name(owner: Owner, option: str) -> str:
    """Name of an option's Deployment and Service."""
    return f"{owner.name}-{option}"


def routing_config_name(owner: Owner) -> str:
    return f"{owner.name}-routing"


def router_name(owner: Owner) -> str:
    return f"{owner.name}-router"


def nodepool_name(owner: Owner, option: str) -> str:
    """NodePools are cluster-scoped, so the namespace is part of the name: `<namespace>-<service>-<option>`
    cut to 52 characters, then a hash of the three parts. Karpenter puts the name on its nodes as the
    label value `karpenter.sh/nodepool`, at most 63 characters; the hash keeps names apart that the
    dashes would join ("a-b" + "c" and "a" + "b-c") and that the cut would make equal."""
    digest = hashlib.sha256(f"{owner.namespace}/{owner.name}/{option}".encode()).hexdigest()[:NODEPOOL_HASH_CHARS]
    readable = f"{owner.namespace}-{owner.name}-{option}"[:NODEPOOL_NAME_MAX - NODEPOOL_HASH_CHARS - 1].rstrip("-")
    return f"{readable}-{digest}"


def pool_url(owner: Owner, option: str, port: int = SERVICE_PORT) -> str:
    """The in-cluster URL of an option's Service (resolves through the pod's DNS search path)."""
    return f"http://{pool_name(owner, option)}.{owner.namespace}.svc:{port}"


def labels(owner: Owner, component: str, option: str | None = None) -> dict[str, str]:
    """The labels of every owned object; `melange.ai/service` and `melange.ai/option` select them."""
    result = {"app.kubernetes.io/name": "vllm" if component == "pool" else "melange-router"
              if component == "router" else "melange",
              "app.kubernetes.io/instance": owner.name, "app.kubernetes.io/component": component,
              "app.kubernetes.io/managed-by": MANAGED_BY, SERVICE_LABEL: owner.name}
    if option is not None:
        result[OPTION_LABEL] = option
    return result


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def content_hash(obj: Mapping[str, Any]) -> str:
    """A short hash of an object's desired content (its hash annotation left out)."""
    body = json.loads(json.dumps(obj, sort_keys=True))
    body.get("metadata", {}).get("annotations", {}).pop(HASH_ANNOTATION, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _finish(obj: dict[str, Any], owner: Owner, namespaced: bool = True) -> dict[str, Any]:
    if namespaced:
        obj["metadata"]["namespace"] = owner.namespace
        obj["metadata"]["ownerReferences"] = [owner_reference(owner)]
    annotations = obj["metadata"].setdefault("annotations", {})
    annotations[HASH_ANNOTATION] = content_hash(obj)
    return obj


def serving_args(profile: Profile) -> list[str]:
    """The `vllm serve` flags a profile was made under (estimates: the estimator's constants)."""
    provenance = profile.provenance
    settings = dict(provenance.get("constants") or {}) if isinstance(provenance.get("constants"), Mapping) else {}
    if isinstance(provenance.get("serving"), Mapping):
        settings.update(provenance["serving"])
    return [arg for key, flag in SERVING_FLAGS.items() if settings.get(key) is not None
            for arg in (flag, str(settings[key]))]


def vllm_deployment(owner: Owner, spec: ServiceSpec, option: GpuOptionSpec, replicas: int, profile: Profile,
                    images: Images, shape: PodShape) -> dict[str, Any]:
    """The vLLM Deployment of one GPU option; `shape` says what its pods need on a GPU node."""
    port = spec.serving.port
    selector = {SERVICE_LABEL: owner.name, OPTION_LABEL: option.name}
    args = [spec.model, "--served-model-name", spec.model, "--host", "0.0.0.0", "--port", str(port),
            "--tensor-parallel-size", str(option.gpus_per_replica), *serving_args(profile), *shape.args,
            *spec.serving.args]
    probe = {"httpGet": {"path": "/health", "port": "http"}}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": spec.serving.image or images.vllm,
        "command": ["vllm", "serve"],
        "args": args,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [dict(e) for e in shape.env],
        "resources": {kind: dict(values) for kind, values in shape.resources.items()},
        # Loading weights can take many minutes: the startup probe allows 30 min before liveness starts.
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 3, "timeoutSeconds": 5},
        # Out of the endpoints and the router's reach before vLLM is told to stop.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_S}}},
        "volumeMounts": [dict(m) for m in shape.mounts],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "nodeSelector": dict(option.node_selector),
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule; the pods tolerate that taint.
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
                        *[dict(t) for t in option.tolerations]],
        # The longest request the grid admits finishes at the SLO before the pod is killed.
        "terminationGracePeriodSeconds": shape.grace_s,
        # A Service named `vllm` in the namespace would inject VLLM_PORT=tcp://..., which vLLM reads.
        "enableServiceLinks": False,
        "volumes": [dict(v) for v in shape.volumes],
    }
    if shape.affinity is not None:
        pod_spec["affinity"] = dict(shape.affinity)
    if spec.node_pool_provider == "karpenter":
        pod_spec["nodeSelector"][NODEPOOL_LABEL] = nodepool_name(owner, option.name)
    if option.gpus_per_replica > 1:  # NCCL between tensor-parallel workers needs a large shared memory
        pod_spec["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}})
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    return _finish({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": pool_name(owner, option.name), "labels": labels(owner, "pool", option.name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # A template change (image, args, env) never takes the pool below the replicas the routing
            # sends load to: a new pod is ready before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "progressDeadlineSeconds": PROGRESS_DEADLINE_S,
            "template": {
                "metadata": {"labels": labels(owner, "pool", option.name),
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                                             "prometheus.io/path": "/metrics"}},
                "spec": pod_spec,
            },
        },
    }, owner)


def disruption_budget(owner: Owner, name: str, selector: Mapping[str, str], component: str,
                      option: str | None = None) -> dict[str, Any]:
    """A PodDisruptionBudget: a node drain evicts the pods of a pool (or the router) one at a time."""
    return _finish({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels(owner, component, option)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}},
    }, owner)


def pool_service(owner: Owner, spec: ServiceSpec, option: str) -> dict[str, Any]:
    """The Service in front of one option's pods; the router reaches the pool through it."""
    return _finish({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": pool_name(owner, option), "labels": labels(owner, "pool", option)},
        "spec": {"selector": {SERVICE_LABEL: owner.name, OPTION_LABEL: option},
                 "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]},
    }, owner)


def routing_config_map(owner: Owner, table: Mapping[str, Any]) -> dict[str, Any]:
    """The routing table the router reads from its mounted file."""
    return _finish({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": routing_config_name(owner), "labels": labels(owner, "routing")},
        "data": {TABLE_KEY: json.dumps(table, indent=1, sort_keys=True)},
    }, owner)


def router_acks_name(owner: Owner) -> str:
    return f"{owner.name}-router-acks"


def router_acks(owner: Owner) -> dict[str, Any]:
    """The ConfigMap where each router pod writes the table version it serves (key: the pod's name). The
    operator creates it empty and owns no key of it; routers own theirs."""
    return _finish({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": router_acks_name(owner), "labels": labels(owner, "router"),
                                 "annotations": {WRITTEN_BY_OTHERS: "data"}}}, owner)


def router_access(owner: Owner) -> list[dict[str, Any]]:
    """The router's ServiceAccount, and a Role bound to it that lets it watch its routing ConfigMap (that
    one only: RBAC names it, and the router lists it by name), write its acknowledgements into the
    acknowledgement ConfigMap (that one only), and watch its pools' EndpointSlices."""
    name = router_name(owner)
    account = _finish({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": name, "labels": labels(owner, "router")}}, owner)
    role = _finish({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "labels": labels(owner, "router")},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"],
                   "resourceNames": [routing_config_name(owner)]},
                  {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"],
                   "resourceNames": [router_acks_name(owner)]},
                  {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}],
    }, owner)
    binding = _finish({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "labels": labels(owner, "router")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }, owner)
    return [account, role, binding]


def table_version(table: Mapping[str, Any]) -> str:
    """The version a routing table is known by: a hash of its content (its own version left out)."""
    return content_hash({key: value for key, value in table.items() if key != "version"})


def router_deployment(owner: Owner, spec: ServiceSpec, images: Images) -> dict[str, Any]:
    """The size-aware router: it watches the routing ConfigMap and the pools' EndpointSlices through the
    API (as its own ServiceAccount) and balances each pool's requests over its ready pods."""
    probe_port = {"port": "http"}
    return _finish({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": router_name(owner), "labels": labels(owner, "router")},
        "spec": {
            "replicas": spec.router_replicas,
            "selector": {"matchLabels": {SERVICE_LABEL: owner.name, "app.kubernetes.io/component": "router"}},
            "template": {
                "metadata": {"labels": labels(owner, "router"),
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(ROUTER_PORT),
                                             "prometheus.io/path": "/metrics"}},
                "spec": {
                    "containers": [{
                        "name": "router",
                        "image": spec.router_image or images.router,
                        "command": ["melange-router"],
                        "args": ["--table-configmap", routing_config_name(owner), "--discover-service", owner.name,
                                 "--acknowledge-configmap", router_acks_name(owner),
                                 "--port", str(ROUTER_PORT), "--model-name", spec.model],
                        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", **probe_port}, "periodSeconds": 5},
                        "livenessProbe": {"httpGet": {"path": "/healthz", **probe_port}, "periodSeconds": 15},
                        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                                      "limits": {"cpu": "2", "memory": "512Mi"}},
                        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
                    }],
                    "serviceAccountName": router_name(owner),
                    "enableServiceLinks": False,
                },
            },
        },
    }, owner)


def router_service(owner: Owner) -> dict[str, Any]:
    """The Service clients call: `http://<service>.<namespace>.svc:8000/v1/...`."""
    return _finish({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": owner.name, "labels": labels(owner, "router")},
        "spec": {"selector": {SERVICE_LABEL: owner.name, "app.kubernetes.io/component": "router"},
                 "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]},
    }, owner)


def pod_monitor(owner: Owner, settings: PodMonitorSettings) -> dict[str, Any]:
    """A `monitoring.coreos.com/v1` PodMonitor (named as the service) that has the Prometheus Operator
    scrape `/metrics` on the `http` port of every pod of the service: the vLLM pools (vLLM's request
    counts and size histograms, which the live workload reads) and the router. Each target keeps the
    pod's option and component labels (`melange_ai_option`, `app_kubernetes_io_component`)."""
    endpoint: dict[str, Any] = {"port": "http", "path": "/metrics"}
    if settings.interval is not None:
        endpoint["interval"] = settings.interval
    return _finish({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": owner.name, "labels": {**dict(settings.labels), **labels(owner, "monitoring")}},
        "spec": {"selector": {"matchLabels": {SERVICE_LABEL: owner.name, "app.kubernetes.io/managed-by": MANAGED_BY}},
                 "podMetricsEndpoints": [endpoint],
                 "podTargetLabels": [OPTION_LABEL, "app.kubernetes.io/component"]},
    }, owner)


def nodepool_gpu_limit(replicas: int, gpus_per_replica: int, gpus_per_node: int | None) -> int:
    """The NodePool's `nvidia.com/gpu` limit: whole instances. Karpenter launches an instance type
    only while the NodePool's GPUs plus the instance's stay within the limit (its scheduler filters
    instance types by the remaining limit: sigs.k8s.io/karpenter pkg/controllers/provisioning/
    scheduling/scheduler.go, filterByRemainingResources), so a limit of the pods' GPUs admits no
    8-GPU p4de.24xlarge for one A100 replica. The replicas fill `gpus_per_node // gpus_per_replica`
    per node; without a known node size the limit is the pods' GPUs."""
    if not gpus_per_node:
        return replicas * gpus_per_replica
    return math.ceil(replicas / (gpus_per_node // gpus_per_replica)) * gpus_per_node


def nodepool(owner: Owner, spec: ServiceSpec, option: GpuOptionSpec, replicas: int, profile: Profile,
             gpus_per_node: int | None = None) -> dict[str, Any]:
    """A Karpenter v1 NodePool for one option: GPU nodes for its pods, whole instances of them.

    Requirements: the option's nodeSelector, and on AWS (`karpenter.k8s.aws` node classes) the GPU
    name label (https://karpenter.sh/docs/reference/instance-types/: instance-gpu-name is lower case).
    Limits: `nodepool_gpu_limit`. Disruption: `spec.nodePools.disruption` (expiry, how long a node
    stays empty, budgets); consolidation only of empty nodes, as the operator decides the replicas.
    """
    requirements = [{"key": key, "operator": "In", "values": [value]}
                    for key, value in sorted(option.node_selector.items())]
    if spec.node_class_ref and spec.node_class_ref.get("group") == "karpenter.k8s.aws" \
            and not any(r["key"] == AWS_GPU_NAME_LABEL for r in requirements):
        requirements.append({"key": AWS_GPU_NAME_LABEL, "operator": "In",
                             "values": [profile.gpu.lower().split("-")[0]]})
    requirements.append({"key": "karpenter.sh/capacity-type", "operator": "In",
                         "values": ["spot"] if option.spot else ["on-demand"]})
    disruption = spec.node_pool_disruption
    return _finish({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool",
        "metadata": {"name": nodepool_name(owner, option.name),
                     "labels": {**labels(owner, "nodepool", option.name), NAMESPACE_LABEL: owner.namespace}},
        "spec": {
            "template": {
                "metadata": {"labels": {SERVICE_LABEL: owner.name, OPTION_LABEL: option.name,
                                        NAMESPACE_LABEL: owner.namespace}},
                "spec": {"nodeClassRef": dict(spec.node_class_ref or {}), "requirements": requirements,
                         "taints": [{"key": GPU_RESOURCE, "effect": "NoSchedule"}],
                         "expireAfter": disruption.expire_after},
            },
            "limits": {GPU_RESOURCE: str(nodepool_gpu_limit(replicas, option.gpus_per_replica, gpus_per_node))},
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": disruption.consolidate_after,
                           "budgets": [dict(b) for b in disruption.budgets]},
        },
    }, owner, namespaced=False)


def plan(owner: Owner, spec: ServiceSpec, replicas: Mapping[str, int], profiles: Mapping[str, Profile],
         routing_table: Mapping[str, Any], images: Images = Images(), catalog: Catalog | None = None,
         gpus_per_node: Mapping[str, int | None] | None = None,
         monitoring: PodMonitorSettings | None = None) -> list[dict[str, Any]]:
    """Every object the allocation `replicas` (option name -> replicas) needs, in apply order. The
    catalog places each pool on its GPU type and sizes its pods (see core/pods.py); `gpus_per_node`
    is each option's node size where known (NodePool limits in whole instances); `monitoring`, when
    given, adds the service's PodMonitor."""
    objects: list[dict[str, Any]] = []
    for option in spec.options:
        count = replicas.get(option.name, 0)
        if count <= 0:
            continue
        if spec.node_pool_provider == "karpenter":
            objects.append(nodepool(owner, spec, option, count, profiles[option.name],
                                    (gpus_per_node or {}).get(option.name)))
        shape = pod_shape(spec, option, profiles, catalog)
        objects.append(vllm_deployment(owner, spec, option, count, profiles[option.name], images, shape))
        objects.append(pool_service(owner, spec, option.name))
        objects.append(disruption_budget(owner, pool_name(owner, option.name),
                                         {SERVICE_LABEL: owner.name, OPTION_LABEL: option.name}, "pool", option.name))
    objects += [routing_config_map(owner, routing_table), router_acks(owner), *router_access(owner),
                router_deployment(owner, spec, images),
                router_service(owner),
                disruption_budget(owner, router_name(owner),
                                  {SERVICE_LABEL: owner.name, "app.kubernetes.io/component": "router"}, "router")]
    if monitoring is not None:
        objects.append(pod_monitor(owner, monitoring))
    return objects
