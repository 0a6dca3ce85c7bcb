"""Last in the run (the file name sorts it there): what the operator did during every cluster test,
as the API server's audit log recorded it, against the chart's RBAC; then `helm uninstall`, after
which deleting a service and the CRD must not hang on a finalizer.

`tests/cluster/operator_calls.json` holds the (verb, resource) pairs the server saw; the chart test
(tests/charts/test_chart.py) keeps the chart's rules equal to it. Regenerate it with
`MELANGE_RECORD_CALLS=1 ./run-tests.sh tests/cluster` after a change to what the operator calls.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from .conftest import OPERATOR_USER, RELEASE, RELEASE_NAMESPACE, TABLE3_RATE_4, arena, helm, settled, wait_until
from .test_lifecycle import owned

pytestmark = pytest.mark.cluster

CALLS_FILE = Path(__file__).with_name("operator_calls.json")
# Tests whose calls together make the full set (a partial run records a subset).
RECORDING_MODULES = {"test_pools", "test_reallocation", "test_lifecycle", "test_karpenter"}


def recorded_calls(events: list[dict], cluster_scoped: set[str]) -> list[dict]:
    """(verb, group/resource[/subresource], cluster-scoped) of each audited request, sorted, once each.
    `clusterwide` says whether the resource is cluster-scoped (a ClusterRole grants it whatever the
    operator watches), not whether the request named a namespace."""
    rows = set()
    for event in events:
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # a non-resource URL (discovery), which any authenticated user may read
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        if ref.get("apiGroup"):
            resource = f"{ref['apiGroup']}/{resource}"
        plural = f"{ref['resource']}.{ref['apiGroup']}" if ref.get("apiGroup") else ref["resource"]
        rows.add((event["verb"], resource, plural in cluster_scoped))
    return [{"verb": v, "resource": r, "clusterwide": c} for v, r, c in sorted(rows)]


def test_every_call_of_the_operator_was_authorized_and_the_chart_grants_exactly_those(cluster, operator, request):
    events = cluster.audit_events(OPERATOR_USER)
    assert events, "the operator made no call as its ServiceAccount"
    # refused by RBAC (a 403 from admission, such as a write into a namespace being deleted, is not)
    refused = [(e["verb"], e.get("requestURI"), e["responseStatus"].get("code")) for e in events
               if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"]
    assert refused == [], refused
    cluster_scoped = set(cluster.kubectl("api-resources", "--namespaced=false", "-o", "name").stdout.split())
    rows = recorded_calls(events, cluster_scoped)
    modules = {item.module.__name__.rsplit(".", 1)[-1] for item in request.session.items}
    complete = RECORDING_MODULES <= modules
    if os.environ.get("MELANGE_RECORD_CALLS") and complete:
        CALLS_FILE.write_text(json.dumps(rows, indent=1) + "\n")
    committed = json.loads(CALLS_FILE.read_text())
    hint = ("the operator's API calls changed: rerun `./run-tests.sh tests/cluster` with MELANGE_RECORD_CALLS=1 "
            "and check the chart's RBAC")
    assert [r for r in rows if r not in committed] == [], hint
    if complete:
        assert rows == committed, hint


def test_after_helm_uninstall_deleting_services_and_the_crd_does_not_hang(cluster, operator):
    namespace = "after-uninstall"
    cluster.kubectl("create", "namespace", namespace)
    manifest = arena(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the mix", timeout_s=120)
    operator.stop()
    helm(cluster, "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "60s")
    assert cluster.kubectl("get", "deployment", "melange-operator", "-n", RELEASE_NAMESPACE,
                           check=False).returncode != 0

    started = time.monotonic()
    cluster.kubectl("delete", "llms", name, "-n", namespace, "--timeout=30s")
    wait_until(lambda: owned(cluster, namespace, name) == {}, "the garbage collector", timeout_s=60)
    cluster.kubectl("delete", "crd", "llmservices.melange.ai", "--timeout=30s")
    assert time.monotonic() - started < 60
    assert cluster.kubectl("get", "crd", "llmservices.melange.ai", check=False).returncode != 0
