"""The router over real pods: the real router process of each router pod (melange.testing.router_pods),
as its own ServiceAccount under the Role the operator gives it, watches its routing ConfigMap and
its pools' EndpointSlices on the real API server, balances each pool's requests over the ready
pods, and acknowledges each table it serves, which a move's switch waits for. KWOK pods have no
network, so the test hook `MELANGE_ROUTER_ENDPOINT_MAP` resolves each pod's address to a local
vLLM-shaped upstream named after the pod; discovery and balancing run unchanged."""
from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time

import pytest
import requests
from aiohttp import web

from melange.testing.openai_upstream import serve_app, upstream_app

from .conftest import TABLE3_RATE_4, arena, settled, wait_until

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


def the_router(router_pods, namespace: str, service: str):
    """The running router of the service's one router pod, once it answers."""
    def answering():
        routers = router_pods.of_service(namespace, service)
        if len(routers) != 1:
            return None
        try:
            return routers[0] if "version" in requests.get(f"{routers[0].url}/routing", timeout=2).json() else None
        except (requests.RequestException, ValueError):
            return None
    return wait_until(answering, "the router pod's process to answer", timeout_s=60)


def routing(router) -> dict:
    return requests.get(f"{router.url}/routing", timeout=5).json()


def follow(router_pods, router, mapping: dict[str, str]) -> None:
    """Resolve pod addresses to local upstreams and wait until the router follows exactly them."""
    router_pods.map_endpoints(mapping)
    wanted = sorted(mapping.values())
    wait_until(lambda: sorted(url for urls in routing(router)["pools"].values() for url in urls) == wanted,
               f"the router to follow {wanted}", timeout_s=30)


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


def test_a_pool_scaled_from_one_to_three_serves_each_pod_a_third(cluster, operator, router_pods, namespace,
                                                                 upstreams):
    manifest = arena(namespace)
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] == "l4"]
    manifest["spec"]["gpuOptions"][0].update({"minReplicas": 1, "maxReplicas": 1})
    manifest["spec"]["workload"]["static"]["rate"] = 0.2  # one L4 serves it
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, {"l4": 1}), "one L4 pod", timeout_s=120)
    router = the_router(router_pods, namespace, name)
    first = ready_pool_pods(cluster, namespace, name, "l4")
    mapping = {address: upstreams.start(pod) for pod, address in first.items()}
    follow(router_pods, router, mapping)
    assert requests.get(f"{router.url}/readyz", timeout=5).status_code == 200
    assert served_by(router.url, 30) == collections.Counter({pod: 30 for pod in first})

    manifest["spec"]["gpuOptions"][0].update({"minReplicas": 3, "maxReplicas": 3})
    cluster.apply(manifest)
    wait_until(lambda: len(ready_pool_pods(cluster, namespace, name, "l4")) == 3, "three ready L4 pods",
               timeout_s=120)
    pods = ready_pool_pods(cluster, namespace, name, "l4")
    mapping.update({address: upstreams.start(pod) for pod, address in pods.items() if pod not in first})
    follow(router_pods, router, mapping)
    answers = served_by(router.url, 300)
    assert sorted(answers) == sorted(pods)
    assert all(90 <= n <= 110 for n in answers.values()), answers  # least in flight: within 10% of 100 each

    # Pods that go are out of the router's reach at once: their endpoints are no longer ready.
    manifest["spec"]["gpuOptions"][0].update({"minReplicas": 1, "maxReplicas": 1})
    cluster.apply(manifest)
    wait_until(lambda: len(routing(router)["pools"]["l4"]) == 1, "the router to drop two endpoints", timeout_s=120)
    left = served_by(router.url, 30)
    assert len(left) == 1 and next(iter(left)) in ready_pool_pods(cluster, namespace, name, "l4")


def test_the_router_is_not_ready_without_a_ready_endpoint(cluster, operator, router_pods, namespace):
    manifest = arena(namespace)
    manifest["spec"]["gpuOptions"] = [o for o in manifest["spec"]["gpuOptions"] if o["name"] == "l4"]
    manifest["spec"]["workload"]["static"]["rate"] = 0.2
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(lambda: settled_any(cluster, name, namespace), "the L4 pool", timeout_s=120)
    router = the_router(router_pods, namespace, name)
    assert requests.get(f"{router.url}/readyz", timeout=5).status_code == 200
    cluster.kubectl("cordon", "-l", "nvidia.com/gpu.product=NVIDIA-L4")
    try:  # the pool's pods go and their replacements stay Pending on the cordoned nodes
        cluster.kubectl("delete", "pods", "-n", namespace, "-l", f"melange.ai/service={name},melange.ai/option=l4",
                        "--wait=false")
        wait_until(lambda: requests.get(f"{router.url}/readyz", timeout=2).status_code == 503,
                   "the router to report not ready", timeout_s=30)
        reason = requests.get(f"{router.url}/readyz", timeout=2).json()["reason"]
        assert "no ready endpoint in pools l4" in reason
    finally:
        cluster.kubectl("uncordon", "-l", "nvidia.com/gpu.product=NVIDIA-L4")


def test_a_move_switches_when_the_router_serves_the_new_table(cluster, operator, router_pods, namespace):
    manifest = arena(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the Table 3 mix", timeout_s=120)
    router = the_router(router_pods, namespace, name)
    acks = lambda: cluster.get("configmap", f"{name}-router-acks", namespace).get("data") or {}  # noqa: E731
    wait_until(lambda: acks().get(router.pod) == routing(router)["version"], "the router's acknowledgement")
    router.process.send_signal(signal.SIGSTOP)  # a router that stops answering and acknowledging
    try:
        before = acks()[router.pod]
        manifest["spec"]["workload"]["static"]["rate"] = 8.0
        cluster.apply(manifest)
        def waiting():
            status = cluster.get("llmservice", name, namespace).get("status") or {}
            progressing = next((c for c in status.get("conditions", []) if c["type"] == "Progressing"), {})
            return (status.get("move") or {}).get("step") == "switching" and router.pod in progressing.get("message", "")
        wait_until(waiting, "the move to wait in switching, naming the router pod", timeout_s=120)
        time.sleep(5)
        assert (cluster.get("llmservice", name, namespace)["status"]["move"]["step"]) == "switching"
        assert acks()[router.pod] == before
    finally:
        router.process.send_signal(signal.SIGCONT)
    wait_until(lambda: (cluster.get("llmservice", name, namespace)["status"].get("move") or {}).get("step")
               in ("draining", "scaling-down", None), "the switch to end once the router acknowledges", timeout_s=30)
    assert acks()[router.pod] == routing(router)["version"] != before


def settled_any(cluster, name: str, namespace: str) -> bool:
    status = (cluster.get("llmservice", name, namespace).get("status") or {})
    return bool(status.get("allocation")) and any(c["type"] == "Ready" and c["status"] == "True"
                                                  for c in status.get("conditions", []))
