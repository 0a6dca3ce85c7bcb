"""The router over real pods: the real router process, as its own ServiceAccount under the Role the
operator gives it, watches its routing ConfigMap and its pools' EndpointSlices on the real API
server and balances each pool's requests over the ready pods. KWOK pods have no network, so the
test hook `MELANGE_ROUTER_ENDPOINT_MAP` resolves each pod's address to a local vLLM-shaped upstream
named after the pod; discovery and balancing run unchanged."""
from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from aiohttp import web

from melange.testing.openai_upstream import serve_app, upstream_app
from melange.testing.ports import free_port, wait_for_http_ok

from .conftest import arena, settled, wait_until

pytestmark = pytest.mark.cluster


class Upstreams:
    """vLLM-shaped upstreams in a background event loop, one per name; each answer says who served it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def start(self, name: str) -> str:
        runner, url = asyncio.run_coroutine_threadsafe(
            serve_app(upstream_app(name), handler_cancellation=True), self.loop).result(10)
        self.runners.append(runner)
        return url

    def stop(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


class RouterProcess:
    """`melange-router` with the router Deployment's own arguments, as the router's ServiceAccount."""

    def __init__(self, cluster, namespace: str, service: str, folder: Path) -> None:
        deployment = cluster.get("deployment", f"{service}-router", namespace)
        pod = deployment["spec"]["template"]["spec"]
        args = list(pod["containers"][0]["args"])
        self.port = free_port()
        args[args.index("--port") + 1] = str(self.port)
        args += ["--host", "127.0.0.1"]
        kubeconfig = cluster.service_account_kubeconfig(namespace, pod["serviceAccountName"],
                                                        folder / f"{service}-router.kubeconfig")
        self.endpoint_map = folder / f"{service}-endpoints.json"
        self.endpoint_map.write_text("{}")
        self.log = folder / f"{service}-router.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": namespace, "POD_NAME": "router-0",
               "MELANGE_ROUTER_ENDPOINT_MAP": str(self.endpoint_map)}
        with self.log.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "melange.operator.router", *args], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._answers, "the router to listen", timeout_s=30)

    def _answers(self) -> bool:
        """Whether this router (not another server that took the port first) answers."""
        self.alive()
        try:
            return "version" in requests.get(f"{self.url}/routing", timeout=2).json()
        except (requests.RequestException, ValueError):
            return False

    def map_endpoints(self, mapping: dict[str, str]) -> None:
        """Resolve pod addresses to local upstreams; returns once the router re-read the map (it does each
        second) and follows exactly these endpoints."""
        temporary = self.endpoint_map.with_suffix(".tmp")
        temporary.write_text(json.dumps(mapping))
        temporary.replace(self.endpoint_map)
        wanted = sorted(mapping.values())
        wait_until(lambda: sorted(url for urls in self.routing()["pools"].values() for url in urls) == wanted,
                   f"the router to follow {wanted}", timeout_s=30)

    def routing(self) -> dict:
        return requests.get(f"{self.url}/routing", timeout=5).json()

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the router exited:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def ready_pool_pods(cluster, namespace: str, service: str, option: str) -> dict[str, str]:
    """Pod name -> `podIP:8000` of the option's ready pods."""
    pods = cluster.get("pods", namespace=namespace)["items"]
    return {p["metadata"]["name"]: f"{p['status']['podIP']}:8000" for p in pods
            if p["metadata"]["labels"].get("melange.ai/service") == service
            and p["metadata"]["labels"].get("melange.ai/option") == option
            and not p["metadata"].get("deletionTimestamp") and p["status"].get("podIP")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}


def served_by(router_url: str, count: int, concurrency: int = 6) -> collections.Counter:
    """Send `count` short completions through the router, `concurrency` at a time; who answered each."""
    async def run() -> collections.Counter:
        import aiohttp
        answers: collections.Counter = collections.Counter()
        queue = list(range(count))
        async with aiohttp.ClientSession() as session:
            async def worker() -> None:
                while queue:
                    queue.pop()
                    async with session.post(f"{router_url}/v1/completions",
                                            json={"model": "m", "prompt": "hello there", "max_tokens": 10}) as reply:
                        assert reply.status == 200, await reply.text()
                        answers[(await reply.json())["served_by"]] += 1
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return answers
    return asyncio.run(run())


@pytest.fixture
def upstreams():
    running = Upstreams()
    yield running
    running.stop()


def test_a_pool_scaled_from_one_to_three_serves_each_pod_a_third(cluster, operator, namespace, upstreams,
                                                                 tmp_path):
    manifest = arena(namespace)
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] == "l4"]
    manifest["spec"]["gpuOptions"][0].update({"minReplicas": 1, "maxReplicas": 1})
    manifest["spec"]["workload"]["static"]["rate"] = 0.2  # one L4 serves it
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, {"l4": 1}), "one L4 pod", timeout_s=120)
    router = RouterProcess(cluster, namespace, name, tmp_path)
    try:
        first = ready_pool_pods(cluster, namespace, name, "l4")
        router.map_endpoints({address: upstreams.start(pod) for pod, address in first.items()})
        assert wait_for_http_ok(f"{router.url}/readyz", 30, router.alive), router.log.read_text()[-3000:]
        assert served_by(router.url, 30) == collections.Counter({pod: 30 for pod in first})

        manifest["spec"]["gpuOptions"][0].update({"minReplicas": 3, "maxReplicas": 3})
        cluster.apply(manifest)
        wait_until(lambda: len(ready_pool_pods(cluster, namespace, name, "l4")) == 3, "three ready L4 pods",
                   timeout_s=120)
        pods = ready_pool_pods(cluster, namespace, name, "l4")
        router.map_endpoints({address: (upstreams.start(pod) if pod not in first else
                                        router_mapping(router)[address]) for pod, address in pods.items()})
        answers = served_by(router.url, 300)
        assert sorted(answers) == sorted(pods)
        assert all(90 <= n <= 110 for n in answers.values()), answers  # least outstanding: within 10% of 100

        # A pod that goes is out of the router's reach at once: its endpoint is no longer ready.
        manifest["spec"]["gpuOptions"][0].update({"minReplicas": 1, "maxReplicas": 1})
        cluster.apply(manifest)
        wait_until(lambda: len(router.routing()["pools"]["l4"]) == 1, "the router to drop two endpoints",
                   timeout_s=120)
        left = served_by(router.url, 30)
        assert len(left) == 1 and next(iter(left)) in ready_pool_pods(cluster, namespace, name, "l4")
    finally:
        router.stop()


def router_mapping(router: RouterProcess) -> dict[str, str]:
    return json.loads(router.endpoint_map.read_text())


def test_the_router_is_not_ready_without_a_ready_endpoint(cluster, operator, namespace, tmp_path):
    manifest = arena(namespace)
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] == "l4"]
    manifest["spec"]["workload"]["static"]["rate"] = 0.2
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(lambda: settled_any(cluster, name, namespace), "the L4 pool", timeout_s=120)
    cluster.kubectl("cordon", "-l", "nvidia.com/gpu.product=NVIDIA-L4")
    router = RouterProcess(cluster, namespace, name, tmp_path)
    try:
        # The table is loaded and the pool has pods, but no address resolves (no map): not ready is only
        # about endpoints, so delete the pods: the cordoned nodes keep their replacements Pending.
        wait_until(lambda: requests.get(f"{router.url}/routing", timeout=2).json()["version"],
                   "the router to load the table", timeout_s=30)
        cluster.kubectl("delete", "pods", "-n", namespace, "-l", f"melange.ai/service={name},melange.ai/option=l4",
                        "--wait=false")
        wait_until(lambda: requests.get(f"{router.url}/readyz", timeout=2).status_code == 503,
                   "the router to report not ready", timeout_s=30)
        reason = requests.get(f"{router.url}/readyz", timeout=2).json()["reason"]
        assert "no ready endpoint in pools l4" in reason
    finally:
        cluster.kubectl("uncordon", "-l", "nvidia.com/gpu.product=NVIDIA-L4")
        router.stop()


def settled_any(cluster, name: str, namespace: str) -> bool:
    status = (cluster.get("llmservice", name, namespace).get("status") or {})
    return bool(status.get("allocation")) and any(c["type"] == "Ready" and c["status"] == "True"
                                                  for c in status.get("conditions", []))
