"""A toy operator for the harness tests, shaped like the real one in miniature: an LLMService gets a
Deployment and a ConfigMap it owns, a status, an Event; spec edits rescale; a 60 s timer ticks.

The create and timer handlers are sync (kopf runs them in its thread pool, where the blocking
`kubernetes` client is fine); the update handler is async and calls the client through
`asyncio.to_thread`, never directly: the API server runs in the same event loop in tests.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "melange.ai", "v1alpha1", "llmservices"
CREATED: list[str] = []  # names, one per run of the create handler (reset when the module is reloaded)
RESUMED: list[str] = []
TICKS: list[str] = []


def api_client() -> kubernetes.client.ApiClient:
    """A client for the cluster in $KUBECONFIG, read at call time (each test has its own server)."""
    return kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])


def owned(body: Any, name: str, namespace: str) -> dict:
    owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"],
             "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    return {"name": name, "namespace": namespace, "ownerReferences": [owner], "labels": {"app": body["metadata"]["name"]}}


def deployment(body: Any, name: str, namespace: str, replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": owned(body, name, namespace),
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.6.0",
                                                           "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}


@kopf.on.create(GROUP, VERSION, PLURAL)
def create(name: str, namespace: str, body: Any, spec: Any, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    with api_client() as client:
        kubernetes.client.AppsV1Api(client).create_namespaced_deployment(
            namespace, deployment(body, f"{name}-pool", namespace, spec.get("replicas", 1)))
        kubernetes.client.CoreV1Api(client).create_namespaced_config_map(
            namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": owned(body, f"{name}-routing", namespace),
                        "data": {"replicas": str(spec.get("replicas", 1))}})  # ConfigMap values must be strings
    patch.status["phase"] = "Created"
    patch.status["handledBy"] = memo.get("operator", "")
    kopf.info(body, reason="Created", message=f"pool {name}-pool with {spec.get('replicas', 1)} replicas")
    CREATED.append(name)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.replicas")
async def rescale(name: str, namespace: str, new: Any, patch: kopf.Patch, body: Any, **_: Any) -> None:
    def scale() -> None:
        with api_client() as client:
            kubernetes.client.AppsV1Api(client).patch_namespaced_deployment(
                f"{name}-pool", namespace, {"spec": {"replicas": new}})
    await asyncio.to_thread(scale)
    patch.status["replicas"] = new
    kopf.info(body, reason="Rescaled", message=f"{new} replicas")


@kopf.on.resume(GROUP, VERSION, PLURAL)
def resume(name: str, **_: Any) -> None:
    RESUMED.append(name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=60)
def tick(name: str, status: Any, **_: Any) -> dict:
    TICKS.append(name)
    return {"ticks": (status.get("tick") or {}).get("ticks", 0) + 1}  # stored by kopf as status.tick
