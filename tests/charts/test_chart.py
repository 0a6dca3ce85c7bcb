"""The Helm chart, checked without a cluster: `helm lint --strict`, rendering with several value
sets, every object against Kubernetes' own schemas, yamllint, the values schema, and RBAC that
grants exactly what the operator was seen to call."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from melange.operator.main import build_parser, pod_monitor_settings
from melange.operator.core.spec import parse_spec

from ..operator.schema import CRD_PATH, schema_errors
from .rendering import CHART, NAMESPACE, NOTES, ROOT, chart, lint, objects, one, render

# A Kubernetes release the chart's kubeVersion (>=1.29) admits, whose schemas kubernetes-validate ships.
K8S_VERSION = "1.33.0"
CALLS_FILE = ROOT / "tests" / "cluster" / "operator_calls.json"  # what a real API server saw
# No image is published: every install names the repository it pushed the Dockerfile's image to.
REPOSITORY = "registry.example.com/melange-operator"
PROMETHEUS = {"url": "https://prometheus.monitoring.svc:9091",
              "bearerTokenSecret": {"name": "prometheus-reader", "key": "token"},
              "caConfigMap": {"name": "prometheus-ca", "key": "ca.crt"}}
VALUE_SETS = {
    "defaults": {"image": {"repository": REPOSITORY}},
    "clusterwide-karpenter": {"image": {"repository": REPOSITORY}, "nodePools": {"karpenter": {"enabled": True}}, "peering": {"enabled": True},
                              "replicaCount": 2, "logLevel": "debug",
                              "prometheus": {"url": "http://prometheus.monitoring.svc:9090"},
                              "metrics": {"port": 9100, "serviceMonitor": {"enabled": True,
                                                                           "labels": {"release": "kps"}}},
                              "podMonitors": {"enabled": True, "interval": "15s",
                                              "labels": {"release": "kps", "example.com/team": "llm"}}},
    "namespaced-prometheus-token": {"watchNamespaces": ["team-a", "team-b"], "prometheus": PROMETHEUS,
                                    "image": {"repository": REPOSITORY, "tag": "0.1.0-rc1"},
                                    "podMonitors": {"enabled": False}, "secrets": {"read": True}},
    "namespaced-karpenter-peering": {"image": {"repository": REPOSITORY}, "watchNamespaces": ["llm"], "nodePools": {"karpenter": {"enabled": True}},
                                     "peering": {"enabled": True}},
}
# kopf's peering objects (kopf.dev/v1; kopf docs, "Deployment" RBAC example and "Peering"): a
# cluster-wide operator uses ClusterKopfPeerings, a namespaced one a KopfPeering per namespace.
PEERING_VERBS = ("get", "list", "watch", "patch")

value_sets = pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())


def container(found: list[dict]) -> dict:
    return one(found, "Deployment")["spec"]["template"]["spec"]["containers"][0]


@value_sets
def test_the_chart_lints_clean_in_strict_mode(values):
    report = lint(values, kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational (only "icon is recommended"); 2 and 3 are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@value_sets
def test_every_rendered_object_passes_the_kubernetes_schemas_strictly(values):
    found = objects(values)
    builtin = [o for o in found if o["kind"] != "ServiceMonitor"]
    assert {o["kind"] for o in builtin} >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
                                            "Service"}
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@value_sets
def test_rendered_manifests_pass_yamllint(values):
    config = YamlLintConfig("extends: default\nrules: {line-length: {max: 120}, document-start: disable}")
    rendered = {path: text for path, text in render(values).items() if path != NOTES and text.strip()}
    rendered |= {name: (CHART / name).read_text() for name in ("Chart.yaml", "values.yaml")}
    problems = [f"{path}:{p.line}: {p.message}" for path, text in rendered.items()
                for p in linter.run(text, config)]
    assert problems == []


def _pairs(rules: list[dict]) -> set[tuple[str, str]]:
    """(verb, group/resource) for every combination a list of RBAC rules grants, as the API call
    log spells them (core group: no prefix)."""
    return {(verb, f"{group}/{resource}" if group else resource)
            for rule in rules for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}


APPLIED_RESOURCES = {"apps/deployments", "services", "configmaps", "karpenter.sh/nodepools",
                     "policy/poddisruptionbudgets", "monitoring.coreos.com/podmonitors", "serviceaccounts",
                     "rbac.authorization.k8s.io/roles", "rbac.authorization.k8s.io/rolebindings"}
# What the operator grants each router (planner.router_access): the API server lets it grant only what it
# holds (RBAC escalation prevention), so it holds these without calling them.
ROUTER_GRANTS = {("list", "configmaps"), ("watch", "configmaps"), ("list", "discovery.k8s.io/endpointslices"),
                 ("watch", "discovery.k8s.io/endpointslices")}


def _expected(values: dict) -> tuple[set, set]:
    """(cluster-scoped grants, grants per watched namespace) from the recorded calls and kopf's docs."""
    calls = json.loads(CALLS_FILE.read_text())
    karpenter = values.get("nodePools", {}).get("karpenter", {}).get("enabled", False)
    peering = values.get("peering", {}).get("enabled", False)
    pod_monitors = values.get("podMonitors", {}).get("enabled", "auto") is not False
    # Secrets are read only for specs whose Prometheus token is a Secret reference: granted on request.
    secrets = values.get("secrets", {}).get("read", False)
    cluster = {(c["verb"], c["resource"]) for c in calls if c["clusterwide"]
               and (karpenter or not c["resource"].startswith("karpenter.sh/"))}
    namespaced = {(c["verb"], c["resource"]) for c in calls if not c["clusterwide"]
                  and (pod_monitors or not c["resource"].startswith("monitoring.coreos.com/"))
                  and (secrets or c["resource"] != "secrets")}
    # Not a call: the API server lets only who may update an owner's finalizers set blockOwnerDeletion
    # on its dependents (OwnerReferencesPermissionEnforcement), which the operator's objects do.
    namespaced.add(("update", "melange.ai/llmservices/finalizers"))
    namespaced |= ROUTER_GRANTS
    # Not a call either: server-side apply is a patch, and the API server authorizes one that creates the
    # object as `create` as well (the audit log records the patch only).
    for grants in (cluster, namespaced):
        grants |= {("create", resource) for verb, resource in set(grants)
                   if verb == "patch" and resource in APPLIED_RESOURCES}
    if values.get("watchNamespaces"):
        namespaced |= {(verb, "kopf.dev/kopfpeerings") for verb in PEERING_VERBS if peering}
        return cluster, namespaced
    cluster |= {(verb, "kopf.dev/clusterkopfpeerings") for verb in PEERING_VERBS if peering}
    return cluster | namespaced, set()


@value_sets
def test_rbac_grants_exactly_the_calls_the_operator_makes(values):
    found = objects(values)
    cluster_grants, namespaced_grants = _expected(values)
    account = one(found, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert one(found, "ServiceAccount")["metadata"]["name"] == account

    cluster_role, binding = one(found, "ClusterRole"), one(found, "ClusterRoleBinding")
    assert _pairs(cluster_role["rules"]) == cluster_grants
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": cluster_role["metadata"]["name"]}
    assert binding["subjects"] == subject

    roles = {o["metadata"]["namespace"]: o for o in found if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in found if o["kind"] == "RoleBinding"}
    assert sorted(roles) == sorted(bindings) == sorted(values.get("watchNamespaces", []))
    for namespace, role in roles.items():
        assert _pairs(role["rules"]) == namespaced_grants
        assert bindings[namespace]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                  "name": role["metadata"]["name"]}
        assert bindings[namespace]["subjects"] == subject
    assert all(not rule.get("resourceNames") and not rule.get("nonResourceURLs")
               for o in found if o["kind"] in ("Role", "ClusterRole") for rule in o["rules"])


@value_sets
def test_the_operator_runs_locked_down(values):
    found = objects(values)
    pod = one(found, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(found)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container(found)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


@value_sets
def test_probes_ports_and_the_metrics_service_agree_with_the_flags(values):
    found = objects(values)
    spec = container(found)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    health_port = values.get("health", {}).get("port", 8080)
    metrics_port = values.get("metrics", {}).get("port", 9090)
    assert ports == {"health": health_port, "metrics": metrics_port}
    assert f"--liveness=http://0.0.0.0:{health_port}/healthz" in spec["args"]
    assert f"--metrics-port={metrics_port}" in spec["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = next(o for o in found if o["kind"] == "Service")
    pod_labels = one(found, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": metrics_port, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    monitors = [o for o in found if o["kind"] == "ServiceMonitor"]
    assert len(monitors) == int(values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False))
    for monitor in monitors:  # no schema for this CRD in kubernetes-validate: the fields that matter
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert monitor["metadata"]["labels"]["release"] == "kps"


@value_sets
def test_the_operator_accepts_the_flags_the_chart_passes(values):
    spec = container(objects(values))
    args = build_parser().parse_args(spec["args"])  # exits (fails the test) on an unknown flag
    assert args.all_namespaces == (not values.get("watchNamespaces"))
    assert args.namespace == values.get("watchNamespaces", [])
    assert (args.standalone, args.peering) == ((False, "melange-operator") if values.get("peering")
                                               else (True, None))
    assert args.verbose == (values.get("logLevel") == "debug")
    image = f"{REPOSITORY}:{values.get('image', {}).get('tag', '0.1.0')}"
    assert spec["image"] == image and args.router_image == image  # the router runs from the operator's image
    assert args.vllm_image == "vllm/vllm-openai:v0.11.0"
    assert args.metrics_port == values.get("metrics", {}).get("port", 9090)
    assert args.prometheus_url == (values.get("prometheus", {}).get("url") or None)
    pod_monitors = values.get("podMonitors", {})
    assert args.pod_monitors == {"auto": "auto", True: "on", False: "off"}[pod_monitors.get("enabled", "auto")]
    settings = pod_monitor_settings(args.pod_monitor_label, args.pod_monitor_interval)
    assert dict(settings.labels) == pod_monitors.get("labels", {})
    assert settings.interval == (pod_monitors.get("interval") or None)


def test_the_prometheus_token_and_ca_are_mounted_where_the_flags_point():
    found = objects(VALUE_SETS["namespaced-prometheus-token"])
    spec, pod = container(found), one(found, "Deployment")["spec"]["template"]["spec"]
    flags = dict(a.split("=", 1) for a in spec["args"] if "=" in a)
    assert flags["--prometheus-url"] == PROMETHEUS["url"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for flag, source, ref in (("--prometheus-token-file", "secret", "bearerTokenSecret"),
                              ("--prometheus-ca-file", "configMap", "caConfigMap")):
        name, key = PROMETHEUS[ref]["name"], PROMETHEUS[ref]["key"]
        mount = next((m for m in spec["volumeMounts"] if flags[flag] == f"{m['mountPath']}/{key}"), None)
        assert mount and mount["readOnly"] is True, f"{flag}={flags[flag]} is not a mounted {source} key"
        volume = volumes[mount["name"]][source]
        assert volume.get("secretName", volume.get("name")) == name
        assert volume["items"] == [{"key": key, "path": key}]
    defaults = container(objects(VALUE_SETS["defaults"]))
    assert not [a for a in defaults["args"] if a.startswith("--prometheus-")]
    assert [m["mountPath"] for m in defaults["volumeMounts"]] == ["/tmp"]


def test_peering_gives_each_pod_a_random_priority(tmp_path):
    """The pod's shell wrapper, run with a stand-in `melange-operator` that prints its arguments."""
    spec = container(objects(VALUE_SETS["clusterwide-karpenter"]))
    stub = tmp_path / "melange-operator"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    printed = subprocess.run(spec["command"] + spec["args"], env=env, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert re.fullmatch(r"--priority=\d+", printed[0]) and 0 <= int(printed[0].split("=")[1]) < 65536
    assert printed[1:] == spec["args"]
    assert "command" not in container(objects(VALUE_SETS["defaults"]))  # standalone: the image's entry point, no shell


BAD_VALUES = {
    "a glob instead of a namespace": ({"watchNamespaces": ["team-*"]}, "watchNamespaces"),
    "an unknown log level": ({"logLevel": "trace"}, "logLevel"),
    "a Prometheus URL without scheme": ({"prometheus": {"url": "prometheus:9090"}}, "url"),
    "a port as a string": ({"metrics": {"port": "9090"}}, "port"),
    "a privileged port": ({"health": {"port": 80}}, "port"),
    "two replicas without peering": ({"replicaCount": 2}, "replicaCount"),
    "a misspelt top-level key": ({"watchNamespace": ["a"]}, "watchNamespace"),
    "no memory limit": ({"resources": {"limits": {"memory": None}}}, "memory"),
    "an unknown pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "a secret name with capitals": ({"prometheus": {"bearerTokenSecret": {"name": "Token"}}}, "name"),
    "pod monitors enabled: yes": ({"podMonitors": {"enabled": "yes"}}, "enabled"),
    "a pod monitor label with a space": ({"podMonitors": {"labels": {"release": "kube prometheus"}}}, "labels"),
    "a pod monitor interval without unit": ({"podMonitors": {"interval": "15"}}, "interval"),
    "secrets read: yes": ({"secrets": {"read": "yes"}}, "read"),
}


@pytest.mark.parametrize("values, field", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_the_values_schema_rejects_bad_values(values, field):
    with pytest.raises(helm.HelmValuesError, match=field):
        render({"image": {"repository": REPOSITORY}} | values)


@pytest.mark.parametrize("values", [{}, {"image": {"repository": ""}}], ids=["default", "empty"])
def test_without_an_image_repository_the_install_stops_saying_to_build_and_push_the_image(values):
    """No image is published: a default install would end in ImagePullBackOff, so it is refused."""
    with pytest.raises(helm.HelmError) as error:
        render(values)
    message = str(error.value)
    assert "image.repository" in message and "Dockerfile" in message and "push" in message, message


def test_secrets_are_granted_only_when_asked():
    """Reading Secrets is what a spec's workload.prometheus.bearerTokenSecretRef needs; nothing else does."""
    def grants(values):
        return {pair for o in objects(values) if o["kind"] in ("Role", "ClusterRole")
                for pair in _pairs(o["rules"])}
    base = VALUE_SETS["defaults"]
    assert ("get", "secrets") not in grants(base)
    assert ("get", "secrets") in grants(base | {"secrets": {"read": True}})
    assert ("get", "secrets") not in grants(base | {"watchNamespaces": ["llm"]})


@value_sets
def test_the_value_sets_pass_the_schema(values):
    chart().validate_schema(chart().merge_values(values))


def test_the_metrics_and_health_ports_must_differ():
    with pytest.raises(helm.HelmError, match="metrics.port and health.port must differ"):
        render({"image": {"repository": REPOSITORY}, "metrics": {"port": 8080}})


def test_the_chart_crd_is_the_top_level_crd_through_a_symlink():
    link = CHART / "crds" / "llmservice.yaml"
    assert link.is_symlink() and link.resolve() == CRD_PATH.resolve()
    # tests/operator/test_crd.py validates that file; the chart ships exactly it.
    assert [(c["filename"], c["data"]) for c in chart().crds] == [("melange-operator/crds/llmservice.yaml",
                                                                  CRD_PATH.read_text())]


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["llm"]}], ids=["clusterwide", "namespaced"])
def test_the_notes_apply_a_valid_llmservice(values):
    notes = render({"image": {"repository": REPOSITORY}} | values)[NOTES]
    service = yaml.safe_load(notes.split("<<'YAML'\n")[1].split("\nYAML\n")[0])
    assert schema_errors(service) == []
    parse_spec(service["spec"])
    assert service["metadata"]["namespace"] == (values.get("watchNamespaces") or ["default"])[0]


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("requests", "limits"):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_values_reference_lists_every_value_with_its_default():
    """docs/helm-values.md (generated; tests/test_docs.py checks it is up to date) against values.yaml, read
    here on its own."""
    section = (ROOT / "docs" / "helm-values.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, flags=re.M))
    defaults = {key: value if isinstance(value, str) and value else json.dumps(value, separators=(",", ":"))
                for key, value in _leaves(yaml.safe_load((CHART / "values.yaml").read_text())).items()}
    assert rows == defaults
