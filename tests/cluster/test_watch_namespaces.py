"""The chart's `watchNamespaces`: the operator watches only the listed namespaces, authorized by a
Role in each (its ClusterRole keeps only cluster-scoped grants), and leaves other namespaces alone;
back to every namespace, it takes the others up."""
from __future__ import annotations

import time

import pytest

from melange.testing.operator_process import local_arguments

from .conftest import (CHART, RELEASE, RELEASE_NAMESPACE, TABLE3_RATE_4, arena, helm, llmservice,
                       operator_container_args, settled, wait_until)

pytestmark = pytest.mark.cluster

def upgrade_and_restart(cluster, operator, *values: str) -> None:
    """`helm upgrade` with the values, and the operator process again with the arguments the upgraded
    chart gives its container; stopped first, as a pod on the old RBAC would be rolled away."""
    operator.stop()
    helm(cluster, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--reuse-values", *values,
         "--wait", "--timeout", "120s")
    operator.args, operator.health_port = local_arguments(operator_container_args(cluster))
    operator.start()


def test_watching_listed_namespaces_uses_roles_and_leaves_other_namespaces_alone(cluster, operator, namespace):
    other = f"{namespace}-unwatched"[:63]
    cluster.kubectl("create", "namespace", other)
    try:
        upgrade_and_restart(cluster, operator, "--set", f"watchNamespaces={{{namespace}}}")
        assert f"--namespace={namespace}" in operator_container_args(cluster)
        role = cluster.get("role", "melange-operator", namespace)
        assert any("llmservices" in rule["resources"] for rule in role["rules"])
        cluster_role = cluster.get("clusterrole", "melange-operator")
        assert not any("llmservices" in rule["resources"] for rule in cluster_role["rules"])

        watched, unwatched = arena(namespace), arena(other)
        cluster.apply([watched, unwatched])
        wait_until(settled(cluster, watched["metadata"]["name"], namespace, TABLE3_RATE_4), "the watched service",
                   timeout_s=120)
        time.sleep(6)  # more than a timer tick: the other namespace's service stays untouched
        assert not (llmservice(cluster, unwatched["metadata"]["name"], other) or {}).get("status")
        assert cluster.get("deployments", namespace=other)["items"] == []
    finally:
        upgrade_and_restart(cluster, operator, "--set-json", "watchNamespaces=[]")
    assert "--all-namespaces" in operator_container_args(cluster)
    wait_until(settled(cluster, unwatched["metadata"]["name"], other, TABLE3_RATE_4), "the service, once watched",
               timeout_s=120)
    cluster.kubectl("delete", "namespace", other, "--wait=false")
