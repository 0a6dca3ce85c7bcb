"""The router over real pods: the real router process of each router pod (melange.testing.router_pods),
as its own ServiceAccount under the Role the operator gives it, watches its routing ConfigMap and
its pools' EndpointSlices on the real API server, balances each pool's requests over the ready
pods, and acknowledges each table it serves, which a move's switch waits for. KWOK pods have no
network, so the test hook `MELANGE_ROUTER_ENDPOINT_MAP` resolves each pod's address to a local
vLLM-shaped upstream named after the pod; discovery and balancing run unchanged."""
from __future__ import annotations

import asyncio
import collections
import json
import signal
import threading
import time

import pytest
import requests
from aiohttp import web

from melange.testing.openai_upstream import SLOW_PROMPT, TOKEN_TEXT, serve_app, upstream_app

from .conftest import TABLE3_RATE_4, arena, settled, wait_until

pytestmark = pytest.mark.cluster


class Upstreams:
    """vLLM-shaped upstreams in a background event loop, one per name; each answer says who served it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []
        self.by_name: dict[str, web.AppRunner] = {}

    def start(self, name: str, **options) -> str:
        """Serve an upstream called `name` (`options` for upstream_app); its URL. Stopping it (a pod that
        goes) cuts its requests in flight after 0.1 s."""
        runner, url = asyncio.run_coroutine_threadsafe(
            serve_app(upstream_app(name, **options), handler_cancellation=True, shutdown_timeout=0.1),
            self.loop).result(10)
        self.runners.append(runner)
        self.by_name[name] = runner
        return url

    def stop_one(self, name: str) -> None:
        """Stop the upstream of a pod that went: what it still serves is cut."""
        runner = self.by_name.pop(name, None)
        if runner is not None:
            self.runners.remove(runner)
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)

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


TABLE3_RATE_1 = {"l4": 1, "a10g": 1, "a100-80gb": 0, "h100": 0}  # the paper's Table 3 at 1 req/s


def only_pool_cell(cluster, namespace: str, service: str, pool: str) -> tuple[int, int]:
    """(input, output) tokens of a request the service's routing table sends to `pool` alone."""
    table = json.loads(cluster.get("configmap", f"{service}-routing", namespace)["data"]["routing.json"])
    edges = table["grid"]["input_edges"], table["grid"]["output_edges"]
    for i, row in enumerate(table["joint_weights"]):
        for j, weights in enumerate(row):
            if set(weights) == {pool}:
                return edges[0][i] // 2, edges[1][j]
    raise AssertionError(f"no cell of {table['joint_weights']} goes to {pool} alone")


def test_a_move_drains_a_request_in_flight_to_the_pool_it_removes(cluster, operator, router_pods, namespace,
                                                                  upstreams):
    """4 -> 1 req/s moves the Arena example from 1 L4 + 1 A100 to 1 L4 + 1 A10G: the A100 pool goes. A
    long request in flight to it keeps the move in `draining` (the router reports it with its
    acknowledgement) until it completes, then the pool is scaled down; the request is not cut, although
    its pod's upstream stops the moment the pod is deleted."""
    manifest = arena(namespace)
    name = manifest["metadata"]["name"]
    cluster.apply(manifest)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_4), "the Table 3 mix", timeout_s=120)
    router = the_router(router_pods, namespace, name)
    slow_s = 25.0
    (a100_pod, a100_address), = ready_pool_pods(cluster, namespace, name, "a100-80gb").items()
    mapping = {a100_address: upstreams.start(a100_pod, slow_seconds=slow_s)}
    mapping.update({address: upstreams.start(pod) for pod, address in
                    ready_pool_pods(cluster, namespace, name, "l4").items()})
    follow(router_pods, router, mapping)

    done = threading.Event()

    def pod_goes() -> None:  # as a kubelet would: the pod's server stops once the pod is being deleted
        while a100_pod in upstreams.by_name and not done.wait(0.2):
            pods = {p["metadata"]["name"]: p for p in cluster.get("pods", namespace=namespace)["items"]}
            if a100_pod not in pods or pods[a100_pod]["metadata"].get("deletionTimestamp"):
                upstreams.stop_one(a100_pod)
    watcher = threading.Thread(target=pod_goes, daemon=True)
    watcher.start()
    try:
        drain_a_long_request(cluster, router, upstreams, name, namespace, a100_pod, manifest, slow_s)
    finally:
        done.set()
        watcher.join(5)


def drain_a_long_request(cluster, router, upstreams, name: str, namespace: str, a100_pod: str, manifest: dict,
                         slow_s: float) -> None:
    """The request sent to the A100 pool alone, the move, and what the drain does while it runs."""
    input_tokens, max_tokens = only_pool_cell(cluster, namespace, name, "a100-80gb")
    answer: dict = {}

    def send() -> None:
        prompt = " ".join([SLOW_PROMPT] * max(1, input_tokens // 2))  # "slow slow ...": 5 characters a word
        reply = requests.post(f"{router.url}/v1/completions", timeout=120,
                              json={"model": "m", "prompt": prompt, "max_tokens": max_tokens})
        answer.update(status=reply.status_code, body=reply.json() if reply.ok else reply.text, at=time.time())
    client = threading.Thread(target=send)
    client.start()
    wait_until(lambda: routing(router)["in_flight"].get("a100-80gb") == 1, "the long request on the A100 pool")

    manifest["spec"]["workload"]["static"]["rate"] = 1.0
    cluster.apply(manifest)
    steps: list[tuple[float, str | None]] = []  # (wall time, step) as the service's status said, on each change

    def status() -> dict:
        return cluster.get("llmservice", name, namespace).get("status") or {}

    def draining() -> dict | None:
        now = status()
        step = (now.get("move") or {}).get("step")
        if not steps or steps[-1][1] != step:
            steps.append((time.time(), step))
        return now if step == "draining" else None
    now = wait_until(draining, "the move to drain", timeout_s=slow_s - 5)
    progressing = next(c for c in now["conditions"] if c["type"] == "Progressing")["message"]
    assert f"waiting for requests in flight to a100-80gb: {router.pod} has 1 to a100-80gb" in progressing
    while client.is_alive():  # the request runs: the move stays in draining, the A100 pod stays
        assert draining() is not None, steps
        assert cluster.get("deployment", f"{name}-a100-80gb", namespace)["spec"]["replicas"] == 1
        assert a100_pod in upstreams.by_name
        time.sleep(0.5)
    client.join()
    assert answer["status"] == 200, answer
    assert answer["body"]["served_by"] == a100_pod
    assert answer["body"]["choices"][0]["text"] == TOKEN_TEXT * max_tokens  # the whole answer
    wait_until(lambda: draining() is None and steps[-1][1] in ("scaling-down", None),
               "the drain to end once the request is done", timeout_s=15)
    ended = steps[-1][0]
    assert ended >= answer["at"] - 0.5, steps  # not before the request completed
    assert ended - answer["at"] < 10, steps  # and soon after (the router reports within 1 s, polls 2 s)
    wait_until(settled(cluster, name, namespace, TABLE3_RATE_1), "the 1 req/s mix, the A100 pool gone",
               timeout_s=60)
    acks = cluster.get("configmap", f"{name}-router-acks", namespace)["data"]
    assert json.loads(acks[f"{router.pod}.in-flight"]) == {"version": routing(router)["version"], "pools": {}}
