"""A service's life on the real cluster: edits converge (drop an option the allocation uses, add
one, change the model or the vLLM image), deletion lets the garbage collector take what the service
owned, `helm upgrade` rolls the operator, and a restarted operator writes nothing that is right."""
from __future__ import annotations

import json
import time

import pytest

from .conftest import (CHART, OPERATOR_USER, RELEASE, RELEASE_NAMESPACE, TABLE3_RATE_4, arena, helm, llmservice,
                       operator_container_args, settled, wait_until)

pytestmark = pytest.mark.cluster

OWNED_KINDS = ("deployments", "replicasets", "pods", "services", "configmaps")


def owned(cluster, namespace: str, name: str) -> dict[str, list[str]]:
    """Kind -> names of the objects in the namespace that belong to the service (its label, or for
    ReplicaSets and Pods their Deployment's name as prefix)."""
    found = {}
    for kind in OWNED_KINDS:
        names = [o["metadata"]["name"] for o in cluster.get(kind, namespace=namespace)["items"]
                 if (o["metadata"].get("labels") or {}).get("melange.ai/service") == name
                 or o["metadata"]["name"].startswith(f"{name}-")]
        if names:
            found[kind] = sorted(names)
    return found


def images(cluster, namespace: str, deployment: str) -> tuple[str, list[str]]:
    container = cluster.get("deployment", deployment, namespace)["spec"]["template"]["spec"]["containers"][0]
    return container["image"], container.get("args") or container.get("command") or []


def test_dropping_an_option_the_allocation_uses_converges(cluster, operator, namespace):
    manifest = arena(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the rate-4 mix", timeout_s=120)
    # Without the A100 the cheapest mix at 4 req/s uses the others (whatever it is, it must run).
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] != "a100-80gb"]
    cluster.apply(manifest)

    def converged():
        service = llmservice(cluster, name, namespace)
        status = service.get("status") or {}
        allocation = status.get("allocation") or {}
        if "a100-80gb" in allocation or status.get("move") or status.get("observedGeneration") != \
                service["metadata"]["generation"]:
            return False
        mix = {k: v for k, v in allocation.items()}
        return settled(cluster, name, namespace, mix)() and mix
    mix = wait_until(converged, "a mix without the dropped option", timeout_s=120)
    assert sum(mix.values()) >= 1
    routing = json.loads(cluster.get("configmap", f"{name}-routing", namespace)["data"]["routing.json"])
    assert "a100-80gb" not in routing["pools"]
    assert f"{name}-a100-80gb" not in owned(cluster, namespace, name).get("deployments", [])


def test_adding_an_option_and_changing_model_and_image_converge(cluster, operator, namespace):
    manifest = arena(namespace)
    name = manifest["metadata"]["name"]
    h100 = next(o for o in manifest["spec"]["gpuOptions"] if o["name"] == "h100")
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] != "h100"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, {"l4": 1, "a10g": 0, "a100-80gb": 1}), "the mix", timeout_s=120)

    manifest["spec"]["gpuOptions"].append(h100)
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the mix with the added option", timeout_s=120)

    manifest["spec"]["model"] = "meta-llama/Llama-2-7b-hf"
    manifest["spec"]["serving"] = {"image": "vllm/vllm-openai:v0.11.1"}
    cluster.apply(manifest)

    def rolled():
        for pool in ("l4", "a100-80gb"):
            deployment = cluster.get("deployment", f"{name}-{pool}", namespace)
            image, args = images(cluster, namespace, f"{name}-{pool}")
            status = deployment.get("status") or {}
            if image != "vllm/vllm-openai:v0.11.1" or "meta-llama/Llama-2-7b-hf" not in args:
                return False
            if status.get("updatedReplicas") != deployment["spec"]["replicas"] or \
                    status.get("readyReplicas") != deployment["spec"]["replicas"] or \
                    status.get("observedGeneration") != deployment["metadata"]["generation"]:
                return False
        return settled(cluster, name, namespace, TABLE3_RATE_4)()
    wait_until(rolled, "the pools rolled to the new model and image", timeout_s=120)


def test_deleting_a_service_lets_the_garbage_collector_take_what_it_owned(cluster, operator, namespace):
    manifest = arena(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the mix", timeout_s=120)
    before = owned(cluster, namespace, name)
    assert {"deployments", "replicasets", "pods", "services", "configmaps"} <= set(before), before
    assert (llmservice(cluster, name, namespace)["metadata"].get("finalizers") or []) == []

    started = time.monotonic()
    cluster.kubectl("delete", "llms", name, "-n", namespace, "--timeout=30s")
    assert time.monotonic() - started < 30
    wait_until(lambda: owned(cluster, namespace, name) == {}, "the garbage collector", timeout_s=60)


def test_helm_upgrade_rolls_the_operator_and_a_restart_writes_nothing_that_is_right(cluster, operator, namespace,
                                                                                    tmp_path):
    manifest = arena(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the mix", timeout_s=120)

    before = cluster.get("deployment", "melange-operator", RELEASE_NAMESPACE)
    helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reuse-values",
         "--set", "logLevel=debug", "--wait", "--timeout", "120s")
    after = cluster.get("deployment", "melange-operator", RELEASE_NAMESPACE)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert "--verbose" in operator_container_args(cluster)
    wait_until(lambda: (d := cluster.get("deployment", "melange-operator", RELEASE_NAMESPACE)["status"])
               .get("updatedReplicas") == d.get("readyReplicas") == 1 and not d.get("unavailableReplicas"),
               "the rolled operator Deployment", timeout_s=60)
    template_hashes = {rs["metadata"]["labels"].get("pod-template-hash"): rs["spec"]["replicas"]
                       for rs in cluster.get("replicasets", namespace=RELEASE_NAMESPACE)["items"]}
    assert sorted(template_hashes.values()) == [0, 1], template_hashes  # old ReplicaSet scaled to 0

    # The restart: the operator process stops and starts again with the upgraded arguments.
    def versions() -> dict[str, str]:
        return {f"{kind}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
                for kind in ("deployments", "services", "configmaps")
                for o in cluster.get(kind, namespace=namespace)["items"]}
    operator.stop()
    before_restart = versions()
    events_before = len(cluster.audit_events(OPERATOR_USER))
    operator.args = [a for a in operator.args if a != "--verbose"] + ["--verbose"]
    operator.start()

    def resumed():  # the resume pass applies the service's objects and writes its status
        return [e for e in cluster.audit_events(OPERATOR_USER)[events_before:]
                if (e.get("objectRef") or {}).get("name") == name and e["verb"] == "patch"
                and e["objectRef"].get("namespace") == namespace and e["objectRef"].get("resource") == "llmservices"]
    wait_until(resumed, "the resumed pass", timeout_s=60)
    time.sleep(2)
    applied = [e for e in cluster.audit_events(OPERATOR_USER)[events_before:]
               if e["verb"] == "patch" and (e.get("objectRef") or {}).get("resource") == "deployments"]
    assert applied, "the resumed pass applies the service's objects (server-side apply)"
    # ... and, as they are right, the API server stores nothing new: no object has a new version
    assert versions() == before_restart
