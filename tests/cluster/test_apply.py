"""How the operator writes, on a real API server: server-side apply (drift in owned fields repaired at
once, fields others own kept), a failing write reported in status and once as an Event, and a move
whose pools never become ready ended at its deadline with the scheduler's reason."""
from __future__ import annotations

import json
import time

import pytest

from .conftest import OPERATOR_USER, arena, condition, llmservice, settled, wait_until

pytestmark = pytest.mark.cluster

TABLE3 = {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}


def deployment(cluster, namespace: str, name: str) -> dict:
    return cluster.get("deployment", name, namespace)


def events(cluster, namespace: str, reason: str) -> list[dict]:
    return [e for e in cluster.get("events", namespace=namespace)["items"] if e.get("reason") == reason]


def test_drift_in_owned_fields_is_repaired_at_once_and_what_others_set_is_kept(cluster, operator, namespace):
    # A 10 minute interval: a repair within seconds comes from the watch on the Deployments, not a timer.
    manifest = arena(namespace, reallocation={"targetUtilisation": 1.0, "interval": "10m"})
    name = manifest["metadata"]["name"]
    pool = f"{name}-l4"
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3), "the mix", timeout_s=120)
    image = deployment(cluster, namespace, pool)["spec"]["template"]["spec"]["containers"][0]["image"]

    cluster.kubectl("annotate", f"deployment/{pool}", "-n", namespace, "example.com/team=serving")
    cluster.kubectl("rollout", "restart", f"deployment/{pool}", "-n", namespace)
    restarted = deployment(cluster, namespace, pool)["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in restarted

    cluster.kubectl("scale", f"deployment/{pool}", "-n", namespace, "--replicas=3")
    container = deployment(cluster, namespace, pool)["spec"]["template"]["spec"]["containers"][0]["name"]
    cluster.kubectl("set", "image", f"deployment/{pool}", "-n", namespace, f"{container}=registry.invalid/other:1")
    started = time.monotonic()
    repaired = wait_until(lambda: (d := deployment(cluster, namespace, pool))["spec"]["replicas"] == 1 and
                          d["spec"]["template"]["spec"]["containers"][0]["image"] == image and d,
                          "the operator to put back replicas and image", timeout_s=30)
    assert time.monotonic() - started < 30  # far less than the 10 minute interval
    assert repaired["metadata"]["annotations"]["example.com/team"] == "serving"
    assert repaired["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] == \
        restarted["kubectl.kubernetes.io/restartedAt"]
    fields = json.loads(cluster.kubectl("get", "deployment", pool, "-n", namespace, "-o", "json",
                                        "--show-managed-fields").stdout)["metadata"]["managedFields"]
    managers = {(m["manager"], m["operation"]) for m in fields}
    assert ("melange-operator", "Apply") in managers
    wait_until(settled(cluster, name, namespace, TABLE3), "the mix again", timeout_s=60)


def test_a_failing_write_is_reported_once_retried_and_recovers(cluster, operator, namespace):
    """A ResourceQuota allows two Deployments; the service needs three (two pools and the router)."""
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "two", "namespace": namespace},
                   "spec": {"hard": {"count/deployments.apps": "2"}}})
    wait_until(lambda: (cluster.get("resourcequota", "two", namespace).get("status") or {}).get("used"),
               "the quota controller to count the namespace")
    manifest = arena(namespace, reallocation={"targetUtilisation": 1.0})
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)

    def failed():
        service = llmservice(cluster, name, namespace)
        found = [c for c in ((service or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == "Reconciled" and c["status"] == "False"]
        return found[0] if found else None
    reconciled = wait_until(failed, "Reconciled=False", timeout_s=60)
    assert reconciled["reason"] == "Forbidden" and "exceeded quota" in reconciled["message"]
    first_try = time.monotonic()
    audit_start = len(cluster.audit_events(OPERATOR_USER))
    time.sleep(20)  # retries at 5, 10 s...: more attempts, still one Event
    tries = [e for e in cluster.audit_events(OPERATOR_USER)[audit_start:]
             if e["verb"] == "patch" and (e.get("objectRef") or {}).get("resource") == "deployments"
             and e["objectRef"].get("namespace") == namespace and e.get("responseStatus", {}).get("code") == 403]
    assert len(tries) >= 2, "the pass is retried"
    warnings = [e for e in events(cluster, namespace, "ReconcileFailed") if e["involvedObject"]["name"] == name]
    assert len(warnings) == 1 and warnings[0].get("count", 1) == 1, warnings
    assert time.monotonic() - first_try >= 20

    cluster.kubectl("delete", "resourcequota", "two", "-n", namespace)
    wait_until(lambda: condition(llmservice(cluster, name, namespace), "Reconciled") == "True", "Reconciled=True",
               timeout_s=60)
    wait_until(settled(cluster, name, namespace, TABLE3), "the mix", timeout_s=60)
    assert [e for e in events(cluster, namespace, "Reconciled") if e["involvedObject"]["name"] == name]


def test_a_move_whose_pools_never_schedule_ends_at_its_deadline_and_says_why(cluster, operator, namespace):
    """At 8 req/s the service wants a second A100; every A100 node is cordoned (capacity gone)."""
    manifest = arena(namespace, reallocation={"targetUtilisation": 1.0, "moveTimeout": "15s"})
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] in ("l4", "a100-80gb")]
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, {"l4": 1, "a100-80gb": 1}), "the Table 3 mix", timeout_s=120)
    a100_nodes = "nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB"
    cluster.kubectl("cordon", "-l", a100_nodes)
    try:
        manifest["spec"]["workload"]["static"]["rate"] = 8.0
        cluster.apply(manifest)
        wait_until(lambda: ((llmservice(cluster, name, namespace) or {}).get("status") or {}).get("move"),
                   "the move to start")

        def timed_out():
            status = (llmservice(cluster, name, namespace) or {}).get("status") or {}
            return status if status.get("lastMoveFailure") and not status.get("move") else None
        status = wait_until(timed_out, "the move's deadline", timeout_s=60)
        progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
        assert progressing["status"] == "False" and progressing["reason"] == "MoveTimedOut"
        assert "a100-80gb 1/2 ready" in progressing["message"], progressing
        assert "nodes are available" in progressing["message"] and "unschedulable" in progressing["message"]
        assert status["allocation"] == {"l4": 2, "a100-80gb": 1}  # what became ready
        warnings = [e for e in events(cluster, namespace, "MoveTimedOut") if e["involvedObject"]["name"] == name]
        assert len(warnings) == 1
        wait_until(lambda: deployment(cluster, namespace, f"{name}-a100-80gb")["spec"]["replicas"] == 1,
                   "the pending replica removed")
        table = json.loads(cluster.get("configmap", f"{name}-routing", namespace)["data"]["routing.json"])
        assert set(table["pools"]) == {"l4", "a100-80gb"}  # both have ready pods
        time.sleep(3)  # the same move is not tried again before the cooldown
        again = llmservice(cluster, name, namespace)["status"]
        assert again.get("move") is None and "timed out" in again["lastDecision"]["reason"], again["lastDecision"]
    finally:
        cluster.kubectl("uncordon", "-l", a100_nodes)

    # Capacity is back and the user edits the spec: the move is tried at once and completes.
    manifest["spec"]["reallocation"]["moveTimeout"] = "10m"
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, {"l4": 2, "a100-80gb": 2}), "the 8 req/s mix", timeout_s=90)
    assert "lastMoveFailure" not in llmservice(cluster, name, namespace)["status"]
