"""Fixtures of the real-cluster tests (marker `cluster`): one local control plane per test run
(`melange.testing.cluster`), KWOK GPU nodes of four types, the chart installed with the real helm,
and the real operator process authenticated as the chart's ServiceAccount.

    def test_something(cluster, operator):   # operator: installed by helm and running
        cluster.apply(manifest)
        wait_until(lambda: ..., "what is awaited")
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from melange.operator.core.status import condition_status
from melange.testing.cluster import LocalCluster, build_binaries
from melange.testing.operator_process import OperatorProcess, local_arguments
from melange.testing.router_pods import RouterPods

from ..conftest import ROOT
from ..operator.test_make_before_break import ready_pods

T = TypeVar("T")
CHART = ROOT / "charts" / "melange-operator"
EXAMPLES_DIR = ROOT / "examples" / "operator"
RELEASE, RELEASE_NAMESPACE = "melange", "melange-system"
OPERATOR_ACCOUNT = "melange-operator"  # the chart's ServiceAccount for release "melange"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_ACCOUNT}"
# Enough GPUs of each type for every example at once: 7 L4, 7 A10G, 8 A100-80GB, 8 H100; CPU nodes for
# routers and the operator's own pod.
NODES = {"m5.xlarge": 2, "g6.xlarge": 3, "g6.12xlarge": 1, "g5.xlarge": 3, "g5.12xlarge": 1,
         "p4de.24xlarge": 1, "p5.48xlarge": 1}
# The paper's Table 3 at 4 req/s for the Arena example: 1 x L4 + 1 x A100.
TABLE3_RATE_4 = {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}
CHART_VALUES = ["--set", "image.repository=registry.invalid/melange-operator",
                "--set", "nodePools.karpenter.enabled=true",
                "--set", "podMonitors.labels.release=kube-prometheus-stack",
                # test_reallocation's live service reads its Prometheus token from a Secret
                "--set", "secrets.read=true"]
POD_MONITOR_LABELS = {"release": "kube-prometheus-stack"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed cluster test shows the operator's and the controllers' last log lines."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    if isinstance(funcargs.get("operator"), OperatorProcess):
        report.sections.append(("operator log", funcargs["operator"].log_tail(80)))
    if isinstance(funcargs.get("cluster"), LocalCluster):
        for component in ("kube-controller-manager", "karpenter"):
            report.sections.append((f"{component} log", funcargs["cluster"].log_tail(component, 15)))


def wait_until(check: Callable[[], T], what: str, timeout_s: float = 60.0, interval_s: float = 0.25) -> T:
    """Poll `check` until it returns something truthy (returned); AssertionError naming `what` and
    the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    value: Any = None
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; last: {value!r}"[:4000])
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def cluster_binaries(request: pytest.FixtureRequest) -> Path:
    """The pinned binaries (built by e2e/build.sh the first time, its progress shown as it goes)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return build_binaries()


@pytest.fixture(scope="session")
def cluster(cluster_binaries: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The control plane with the GPU nodes and the Prometheus Operator's PodMonitor CRD (as where
    kube-prometheus-stack runs), for the whole run; stopped (nothing left running) after it."""
    local = LocalCluster(cluster_binaries, tmp_path_factory.mktemp("cluster"))
    local.start()
    try:
        local.add_nodes(NODES)
        local.install_monitoring_crds()
        yield local
    finally:
        local.stop(keep_folder=True)


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real helm binary against the cluster (admin credentials, as a user installs)."""
    result = subprocess.run([str(cluster.bin / "helm"), *args], capture_output=True, text=True,
                            env=cluster.env(), timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def operator_container_args(cluster: LocalCluster) -> list[str]:
    """The arguments of the operator container in the chart's Deployment, as installed."""
    deployment = cluster.get("deployment", OPERATOR_ACCOUNT, RELEASE_NAMESPACE)
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def start_operator(cluster: LocalCluster, folder: Path, name: str = "operator") -> OperatorProcess:
    """The operator process with the chart container's arguments, as the chart's ServiceAccount."""
    kubeconfig = cluster.service_account_kubeconfig(RELEASE_NAMESPACE, OPERATOR_ACCOUNT, folder / f"{name}.kubeconfig")
    args, health = local_arguments(operator_container_args(cluster))
    return OperatorProcess(args, kubeconfig, folder / f"{name}.log", health).start()


@pytest.fixture(scope="session")
def release(cluster: LocalCluster) -> str:
    """`helm install` of the chart (CRD, RBAC, the operator's Deployment); the release name."""
    helm(cluster, "install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace", "--wait",
         "--timeout", "120s", *CHART_VALUES)
    return RELEASE


@pytest.fixture(scope="session")
def router_pods(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterPods]:
    """A real router process for each ready router pod (KWOK runs no containers), as its pod's
    ServiceAccount: they acknowledge the routing tables the operator switches to."""
    running = RouterPods(cluster, tmp_path_factory.mktemp("routers")).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, release: str, router_pods: RouterPods,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The real operator, running for the whole run under the chart's RBAC (with the routers running)."""
    folder = tmp_path_factory.mktemp("operator")
    process = start_operator(cluster, folder)
    try:
        yield process
    finally:
        process.stop()


_namespaces: list[str] = []


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted after it (without waiting)."""
    _namespaces.append(request.node.name)
    words = "".join(c if c.isalnum() else "-" for c in request.node.name.lower().removeprefix("test_"))
    name = f"t{len(_namespaces)}-{words}"[:40].strip("-")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def llmservice(cluster: LocalCluster, name: str, namespace: str) -> dict[str, Any] | None:
    """The LLMService as the API server has it, or None."""
    result = cluster.kubectl("get", "llmservice", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def condition(obj: dict[str, Any] | None, kind: str) -> str | None:
    """The status of one condition of an object ("True", "False", None when absent)."""
    return condition_status((obj or {}).get("status"), kind)


def example(file: str, namespace: str) -> dict[str, Any]:
    """An example LLMService manifest, moved into `namespace`."""
    manifest = yaml.safe_load((EXAMPLES_DIR / file).read_text())
    manifest["metadata"]["namespace"] = namespace
    return manifest


def arena(namespace: str, **spec_changes: Any) -> dict[str, Any]:
    """The Arena example with one router replica and `spec_changes`."""
    manifest = example("arena-llama2-7b.yaml", namespace)
    manifest["spec"]["router"] = {"replicas": 1}
    manifest["spec"].update(spec_changes)
    return manifest


def settled(cluster: LocalCluster, name: str, namespace: str, mix: dict[str, int]) -> Callable[[], bool]:
    """The service runs `mix`: in status, no move, Ready, and its Deployments' ready replicas."""
    def check() -> bool:
        service = llmservice(cluster, name, namespace)
        status = (service or {}).get("status") or {}
        if status.get("allocation") != mix or status.get("move") or condition(service, "Ready") != "True":
            return False
        deployments = {d["metadata"]["name"]: d for d in cluster.get("deployments", namespace=namespace)["items"]}
        return all(f"{name}-{pool}" in deployments and ready_pods(deployments[f"{name}-{pool}"]) == n
                   for pool, n in mix.items() if n) and all(
            f"{name}-{pool}" not in deployments for pool, n in mix.items() if not n)
    return check
