"""The Kubernetes side of a reconcile, with the official `kubernetes` client: read what a service
references and owns, apply what it wants. Blocking calls; the kopf handlers run them in a thread.

Writes are server-side apply under the field manager `melange-operator`, forced: each pass applies
every desired object that anyone changed since the operator last applied it (its resourceVersion
moved) or whose desired content changed, so a change to a field the operator owns (`kubectl scale`,
`kubectl edit`) is put back, fields others own (`kubectl rollout restart`'s annotation) stay, and an
object nobody touched costs no call. Every call has a timeout; conflicts, throttling and server
errors are retried.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from melange.operator.core.diff import Actions, ObjectKey
from melange.operator.core.planner import (GROUP, HASH_ANNOTATION, MANAGED_BY, OPTION_LABEL, SERVICE_LABEL,
                                           VERSION, WRITTEN_BY_OTHERS, Owner)
from melange.operator.core.problem import ConfigData
from melange.operator.core.spec import KeyRef

log = logging.getLogger(__name__)
NAMESPACE_LABEL = f"{GROUP}/namespace"
NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL = "karpenter.sh", "v1", "nodepools"
MONITORING_GROUP, MONITORING_VERSION, POD_MONITOR_PLURAL = "monitoring.coreos.com", "v1", "podmonitors"
RBAC_VERSION = "rbac.authorization.k8s.io/v1"
PLURAL = "llmservices"
DISCOVERY_TTL_S = 60.0  # how long an answer "this API is (not) served" is reused
FIELD_MANAGER = MANAGED_BY
APPLY = "application/apply-patch+yaml"
REQUEST_TIMEOUT_S = (5.0, 30.0)  # connect, read: a hung call must not hold a service's pass
RETRIED_STATUSES = {409, 429, 500, 502, 503, 504}
ATTEMPTS = 4


def call(method: Any, *args: Any, **kwargs: Any) -> Any:
    """One API call with a timeout, retried (with backoff) on conflict, throttling, server errors and
    dropped connections."""
    for attempt in range(ATTEMPTS):
        try:
            return method(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as error:
            if error.status not in RETRIED_STATUSES or attempt == ATTEMPTS - 1:
                raise
        except HTTPError:
            if attempt == ATTEMPTS - 1:
                raise
        time.sleep(0.2 * 2 ** attempt)
    raise AssertionError("unreachable")


def call_plain(method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`call`, answering the API server's JSON as plain dicts: the client's typed models cost more to
    build (and to turn back into dicts) than the rest of a pass's reading."""
    response = call(method, *args, _preload_content=False, **kwargs)
    return json.loads(response.data) if response.data else {}


class Refused(RuntimeError):
    """A call the API server refused, with what to do about it: (reason, message) as describe_error gives."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def describe_error(error: BaseException) -> tuple[str, str]:
    """(reason, message) of a failed call, for a condition and an Event."""
    if isinstance(error, Refused):
        return error.reason, error.message
    if isinstance(error, ApiException):
        reason = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid"}.get(error.status, "APIError")
        try:
            message = json.loads(error.body or "{}").get("message") or error.reason
        except ValueError:
            message = error.reason
        return reason, f"{error.status} {message}"
    if isinstance(error, HTTPError):
        return "APIUnreachable", str(error)
    return type(error).__name__, str(error)


class NoClusterAccess(Exception):
    """Neither an in-cluster service account nor a usable kubeconfig: the message is one line naming
    where the operator looked."""


def load_config() -> kubernetes.client.ApiClient:
    """An API client from the in-cluster service account, else from KUBECONFIG / ~/.kube/config.

    Raises NoClusterAccess, saying what was looked for, when neither gives a connection."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException as error:
        in_cluster = ("not in a pod with a service account (KUBERNETES_SERVICE_HOST is not set)"
                      if not os.environ.get("KUBERNETES_SERVICE_HOST")
                      else f"the in-cluster service account failed ({_one_line(error)})")
    # The client reads $KUBECONFIG once, when it is first imported: read it now instead.
    variable = os.environ.get("KUBECONFIG")
    files = [f for f in variable.split(os.pathsep) if f] if variable else [os.path.expanduser("~/.kube/config")]
    where = f"KUBECONFIG={variable}" if variable else f"{files[0]} (KUBECONFIG is not set)"
    hint = "run in a pod with a service account, or set KUBECONFIG to a kubeconfig file"
    if not any(os.path.isfile(f) for f in files):
        raise NoClusterAccess(f"no Kubernetes connection: {in_cluster}, and no kubeconfig file at {where}; {hint}")
    try:
        return kubernetes.config.new_client_from_config(config_file=variable or files[0])
    except Exception as error:  # ConfigException, a YAML error, a missing certificate file, ...
        raise NoClusterAccess(f"no Kubernetes connection: {in_cluster}, and the kubeconfig at {where} is not usable: "
                              f"{_one_line(error)}; {hint}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class Cluster:
    """Reads and writes the objects of LLMServices."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.policy = kubernetes.client.PolicyV1Api(api)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(api)
        # The built-in kinds a service owns: kind -> (apiVersion, client, the client methods' suffix).
        self._kinds: dict[str, tuple[str, Any, str]] = {
            "Deployment": ("apps/v1", self.apps, "deployment"), "Service": ("v1", self.core, "service"),
            "ConfigMap": ("v1", self.core, "config_map"),
            "PodDisruptionBudget": ("policy/v1", self.policy, "pod_disruption_budget"),
            "ServiceAccount": ("v1", self.core, "service_account"), "Role": (RBAC_VERSION, self.rbac, "role"),
            "RoleBinding": (RBAC_VERSION, self.rbac, "role_binding")}
        # object -> (desired content hash, resourceVersion the API server gave it after our apply)
        self.applied: dict[ObjectKey, tuple[str | None, str | None]] = {}
        self._served: dict[tuple[str, str, str], tuple[float, bool]] = {}

    def serves(self, group: str, version: str, plural: str) -> bool:
        """Whether the API server serves a resource (its CRD is installed); asked again after a minute,
        so that installing the Prometheus Operator later is noticed."""
        key = (group, version, plural)
        known = self._served.get(key)
        if known is not None and time.monotonic() - known[0] < DISCOVERY_TTL_S:
            return known[1]
        try:
            resources = call(self.custom.get_api_resources, group, version)
            answer = any(r.name == plural for r in (resources.resources or [])) if resources else False
        except ApiException as error:
            if error.status != 404:
                raise
            answer = False
        self._served[key] = (time.monotonic(), answer)
        return answer

    def serves_pod_monitors(self) -> bool:
        """Whether the Prometheus Operator's PodMonitor CRD is installed."""
        return self.serves(MONITORING_GROUP, MONITORING_VERSION, POD_MONITOR_PLURAL)

    def read_config_data(self, namespace: str, refs: Iterable[KeyRef]) -> ConfigData:
        """The referenced ConfigMap keys that exist (a missing one is reported by the reconcile)."""
        data: dict[tuple[str, str], str] = {}
        for name in sorted({ref.name for ref in refs}):
            try:
                config_map = call(self.core.read_namespaced_config_map, name, namespace)
            except ApiException as error:
                if error.status == 404:
                    continue
                raise
            for key, value in (config_map.data or {}).items():
                data[(name, key)] = value
        return data

    def read_secret(self, namespace: str, ref: KeyRef,
                    wanted_by: str = "spec.workload.prometheus.bearerTokenSecretRef") -> str | None:
        """One key of a Secret, decoded; None when the Secret or the key does not exist. The chart
        grants reading Secrets only with `secrets.read`: a refusal says so."""
        try:
            secret = call(self.core.read_namespaced_secret, ref.name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status == 403:
                _, message = describe_error(error)
                raise Refused("Forbidden", f"{message}; the operator may not read Secret {ref.name} in namespace "
                                           f"{namespace}, which {wanted_by} names: install the chart with "
                                           f"secrets.read=true (helm upgrade ... --set secrets.read=true) or "
                                           f"grant get on secrets to its ServiceAccount") from error
            raise
        value = (secret.data or {}).get(ref.key)
        return None if value is None else base64.b64decode(value).decode().strip()

    def ca_bundle_file(self, namespace: str, ref: KeyRef) -> str | None:
        """A ConfigMap key holding a CA bundle, written to a private temporary file (the HTTP client
        takes a path); None when the key does not exist."""
        data = self.read_config_data(namespace, [ref]).get((ref.name, ref.key))
        if data is None:
            return None
        folder = Path(tempfile.gettempdir()) / "melange-ca"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{namespace}-{ref.name}-{ref.key}"
        path.write_text(data)
        return str(path)

    def owned_objects(self, owner: Owner, node_pools: bool, pod_monitors: bool = False) -> list[dict[str, Any]]:
        """Deployments, Services, ConfigMaps, PodDisruptionBudgets and the router's ServiceAccount, Role and
        RoleBinding the service owns (by label), and where asked its NodePools and PodMonitors."""
        selector = _owned_selector(owner)
        found = []
        for kind, (api_version, api, suffix) in self._kinds.items():
            listed = call_plain(getattr(api, f"list_namespaced_{suffix}"), owner.namespace, label_selector=selector)
            found += [{"apiVersion": api_version, "kind": kind, **o} for o in listed.get("items") or []]
        if node_pools:
            found += self.node_pools(owner)
        if pod_monitors:
            found += call(self.custom.list_namespaced_custom_object, MONITORING_GROUP, MONITORING_VERSION,
                          owner.namespace, POD_MONITOR_PLURAL, label_selector=selector).get("items", [])
        return found

    def node_pools(self, owner: Owner) -> list[dict[str, Any]]:
        """The service's Karpenter NodePools (cluster-scoped, found by label)."""
        selector = f"{SERVICE_LABEL}={owner.name},{NAMESPACE_LABEL}={owner.namespace}"
        answer = call(self.custom.list_cluster_custom_object, NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL,
                      label_selector=selector)
        return list(answer.get("items", []))

    def ready_routers(self, owner: Owner) -> list[str]:
        """The names of the service's ready router pods (not being deleted)."""
        selector = f"{SERVICE_LABEL}={owner.name},app.kubernetes.io/component=router"
        pods = call_plain(self.core.list_namespaced_pod, owner.namespace, label_selector=selector).get("items") or []
        return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
                      and any(c.get("type") == "Ready" and c.get("status") == "True"
                              for c in (p.get("status") or {}).get("conditions") or []))

    def pod_problems(self, owner: Owner) -> dict[str, str]:
        """Why the pools' pods are not ready, one line per option: the scheduler's message for a pod
        that is not placed ("0/6 nodes are available: 6 Insufficient nvidia.com/gpu"), else a waiting
        or failing container's reason."""
        pods = call_plain(self.core.list_namespaced_pod, owner.namespace,
                          label_selector=_owned_selector(owner)).get("items") or []
        problems: dict[str, str] = {}
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            option = (pod["metadata"].get("labels") or {}).get(OPTION_LABEL)
            why = pod_problem(pod)
            if option and why and option not in problems:
                problems[option] = why
        return problems

    def apply(self, desired: Sequence[Mapping[str, Any]], actual: Sequence[Mapping[str, Any]],
              actions: Actions) -> list[str]:
        """Apply each desired object that changed since our last apply of it, on either side, then scale
        to zero and delete what the diff says; returns one line per change, for the log."""
        versions = {ObjectKey.of(o): (o.get("metadata") or {}).get("resourceVersion") for o in actual}
        created = {ObjectKey.of(o) for o in actions.create}
        changed = {ObjectKey.of(o) for o in actions.replace}
        done = []
        for obj in desired:
            key = ObjectKey.of(obj)
            content = (obj["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)
            if key in versions and self.applied.get(key) == (content, versions[key]):
                continue  # nobody changed it since we applied this content
            shared = (obj["metadata"].get("annotations") or {}).get(WRITTEN_BY_OTHERS)
            if shared and key in versions and key not in created and key not in changed:
                continue  # others write into it (each write moves its version): unchanged content is enough
            stored = self._apply(obj)
            # (the client gives no body for a custom object created by apply: then it is applied again)
            self.applied[key] = (content, ((stored or {}).get("metadata") or {}).get("resourceVersion"))
            if key in created or key in changed:
                done.append(f"{'created' if key in created else 'updated'} {key.describe()}")
        for key in actions.scale_to_zero:
            call(self.apps.patch_namespaced_deployment, key.name, key.namespace, {"spec": {"replicas": 0}},
                 field_manager=FIELD_MANAGER)
            done.append(f"scaled {key.describe()} to 0")
        for key in actions.delete:
            self._delete(key)
            done.append(f"deleted {key.describe()}")
        for line in done:
            log.info(line)
        return done

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> str | None:
        """Merge `patch` ({"status": {...}}, None deleting a key) into an LLMService's status; the
        service's resourceVersion after it (None: the service was deleted meanwhile)."""
        try:
            stored = call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name,
                          patch)
        except ApiException as error:
            if error.status != 404:
                raise
            return None
        return ((stored or {}).get("metadata") or {}).get("resourceVersion")

    def delete_node_pools(self, owner: Owner) -> None:
        """Delete the service's NodePools (owner references cannot reach cluster-scoped objects)."""
        for pool in self.node_pools(owner):
            self._delete(ObjectKey.of(pool))

    def _apply(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Server-side apply of one object; the object as stored, when the client returns it."""
        meta = obj["metadata"]
        kind = obj["kind"]
        options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
        if kind in self._kinds:
            _, api, suffix = self._kinds[kind]
            return call_plain(getattr(api, f"patch_namespaced_{suffix}"), meta["name"], meta["namespace"], obj,
                              **options)
        elif kind == "NodePool":
            return call(self.custom.patch_cluster_custom_object, NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL,
                        meta["name"], obj, **options)
        elif kind == "PodMonitor":
            return call(self.custom.patch_namespaced_custom_object, MONITORING_GROUP, MONITORING_VERSION,
                        meta["namespace"], POD_MONITOR_PLURAL, meta["name"], obj, **options)
        else:
            raise ValueError(f"cannot apply {kind}")

    def _delete(self, key: ObjectKey) -> None:
        try:
            if key.kind in self._kinds:
                _, api, suffix = self._kinds[key.kind]
                call(getattr(api, f"delete_namespaced_{suffix}"), key.name, key.namespace)
            elif key.kind == "NodePool":
                call(self.custom.delete_cluster_custom_object, NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL,
                     key.name)
            elif key.kind == "PodMonitor":
                call(self.custom.delete_namespaced_custom_object, MONITORING_GROUP, MONITORING_VERSION, key.namespace,
                     POD_MONITOR_PLURAL, key.name)
            else:
                raise ValueError(f"cannot delete {key.kind}")
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise


def _owned_selector(owner: Owner) -> str:
    return f"{SERVICE_LABEL}={owner.name},app.kubernetes.io/managed-by={MANAGED_BY}"


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why one pod is not ready, in a line; None when it is ready or nothing says why yet."""
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if (conditions.get("Ready") or {}).get("status") == "True":
        return None
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        return scheduled.get("message") or scheduled.get("reason") or "not scheduled"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        for phase in ("waiting", "terminated"):
            detail = state.get(phase) or {}
            if detail.get("reason") and detail.get("reason") not in ("ContainerCreating", "PodInitializing"):
                text = f"container {container.get('name')}: {detail['reason']}"
                return f"{text}: {detail['message']}" if detail.get("message") else text
    return None
