"""The Kubernetes side of a reconcile, with the official `kubernetes` client: read what a service
references and owns, apply the diff. Blocking calls; the kopf handlers run them in a thread."""
from __future__ import annotations

import base64
import logging
import os
import tempfile
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from melange.operator.core.diff import Actions, ObjectKey
from melange.operator.core.planner import GROUP, MANAGED_BY, SERVICE_LABEL, Owner
from melange.operator.core.problem import ConfigData
from melange.operator.core.spec import KeyRef

log = logging.getLogger(__name__)
NAMESPACE_LABEL = f"{GROUP}/namespace"
NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL = "karpenter.sh", "v1", "nodepools"


def load_config() -> kubernetes.client.ApiClient:
    """An API client from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        # The client reads $KUBECONFIG once, when it is first imported: read it now instead.
        return kubernetes.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


class Cluster:
    """Reads and writes the objects of LLMServices."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    def _plain(self, obj: Any, api_version: str, kind: str) -> dict[str, Any]:
        data = self.api.sanitize_for_serialization(obj)
        data.setdefault("apiVersion", api_version)
        data.setdefault("kind", kind)
        return data

    def read_config_data(self, namespace: str, refs: Iterable[KeyRef]) -> ConfigData:
        """The referenced ConfigMap keys that exist (a missing one is reported by the reconcile)."""
        data: dict[tuple[str, str], str] = {}
        for name in sorted({ref.name for ref in refs}):
            try:
                config_map = self.core.read_namespaced_config_map(name, namespace)
            except ApiException as error:
                if error.status == 404:
                    continue
                raise
            for key, value in (config_map.data or {}).items():
                data[(name, key)] = value
        return data

    def read_secret(self, namespace: str, ref: KeyRef) -> str | None:
        """One key of a Secret, decoded; None when the Secret or the key does not exist."""
        try:
            secret = self.core.read_namespaced_secret(ref.name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
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

    def owned_objects(self, owner: Owner, node_pools: bool) -> list[dict[str, Any]]:
        """Deployments, Services and ConfigMaps the service owns (by label), and its NodePools."""
        selector = f"{SERVICE_LABEL}={owner.name},app.kubernetes.io/managed-by={MANAGED_BY}"
        found = [self._plain(o, "apps/v1", "Deployment")
                 for o in self.apps.list_namespaced_deployment(owner.namespace, label_selector=selector).items]
        found += [self._plain(o, "v1", "Service")
                  for o in self.core.list_namespaced_service(owner.namespace, label_selector=selector).items]
        found += [self._plain(o, "v1", "ConfigMap")
                  for o in self.core.list_namespaced_config_map(owner.namespace, label_selector=selector).items]
        if node_pools:
            found += self.node_pools(owner)
        return found

    def node_pools(self, owner: Owner) -> list[dict[str, Any]]:
        """The service's Karpenter NodePools (cluster-scoped, found by label)."""
        selector = f"{SERVICE_LABEL}={owner.name},{NAMESPACE_LABEL}={owner.namespace}"
        answer = self.custom.list_cluster_custom_object(NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL,
                                                        label_selector=selector)
        return list(answer.get("items", []))

    def apply(self, actions: Actions, actual: Sequence[Mapping[str, Any]]) -> list[str]:
        """Carry out `actions` in order; returns one line per change, for the log."""
        versions = {ObjectKey.of(o): (o.get("metadata") or {}).get("resourceVersion") for o in actual}
        done = []
        for obj in actions.create:
            self._create(obj)
            done.append(f"created {ObjectKey.of(obj).describe()}")
        for obj in actions.replace:
            body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": versions.get(ObjectKey.of(obj))}}
            self._replace(body)
            done.append(f"updated {ObjectKey.of(obj).describe()}")
        for key in actions.scale_to_zero:
            self.apps.patch_namespaced_deployment(key.name, key.namespace, {"spec": {"replicas": 0}})
            done.append(f"scaled {key.describe()} to 0")
        for key in actions.delete:
            self._delete(key)
            done.append(f"deleted {key.describe()}")
        for line in done:
            log.info(line)
        return done

    def delete_node_pools(self, owner: Owner) -> None:
        """Delete the service's NodePools (owner references cannot reach cluster-scoped objects)."""
        for pool in self.node_pools(owner):
            self._delete(ObjectKey.of(pool))

    def _create(self, obj: Mapping[str, Any]) -> None:
        namespace = obj["metadata"].get("namespace")
        kind = obj["kind"]
        if kind == "Deployment":
            self.apps.create_namespaced_deployment(namespace, obj)
        elif kind == "Service":
            self.core.create_namespaced_service(namespace, obj)
        elif kind == "ConfigMap":
            self.core.create_namespaced_config_map(namespace, obj)
        elif kind == "NodePool":
            self.custom.create_cluster_custom_object(NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL, obj)
        else:
            raise ValueError(f"cannot create {kind}")

    def _replace(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        kind = obj["kind"]
        if kind == "Deployment":
            self.apps.replace_namespaced_deployment(meta["name"], meta["namespace"], obj)
        elif kind == "Service":
            self.core.replace_namespaced_service(meta["name"], meta["namespace"], obj)
        elif kind == "ConfigMap":
            self.core.replace_namespaced_config_map(meta["name"], meta["namespace"], obj)
        elif kind == "NodePool":
            self.custom.replace_cluster_custom_object(NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL,
                                                      meta["name"], obj)
        else:
            raise ValueError(f"cannot replace {kind}")

    def _delete(self, key: ObjectKey) -> None:
        try:
            if key.kind == "Deployment":
                self.apps.delete_namespaced_deployment(key.name, key.namespace)
            elif key.kind == "Service":
                self.core.delete_namespaced_service(key.name, key.namespace)
            elif key.kind == "ConfigMap":
                self.core.delete_namespaced_config_map(key.name, key.namespace)
            elif key.kind == "NodePool":
                self.custom.delete_cluster_custom_object(NODEPOOL_GROUP, NODEPOOL_VERSION, NODEPOOL_PLURAL, key.name)
            else:
                raise ValueError(f"cannot delete {key.kind}")
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise
