"""Make-before-break, checked at every write: while the real operator moves a service between mixes
(against the emulated API, in real time), the pools' ready replicas always carry the load the
routing table in the cluster sends them, and no request sent through the real router fails.

The load a pool must carry is computed here from first principles, not with the operator's code:
for each (input, output) bucket, rate x share x the pool's routing weight / the pool's max req/s
per replica in that bucket (from the spec's inline profiles), summed over buckets; the pool's
Deployment must have at least that many ready replicas. The observed demand is the spec's static
workload at that moment; every move here keeps the old mix able to serve it (a lower rate, a price
change), so the invariant can hold from the first write of the move to the last.

A stand-in Deployment controller makes new pods ready some seconds after they are asked for and
removes pods at once on a scale-down. Fake vLLM upstreams run per pool while it has ready pods; the
router's table file follows the routing ConfigMap, with each pool's URL pointing at its upstream
(or at a closed port while it has none).
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
from pathlib import Path

import aiohttp
import kopf
import pytest
import yaml

from melange.operator import handlers
from melange.operator.handlers import OperatorConfig
from melange.operator.router.proxy import SERVER_OPTIONS, Router, build_app
from melange.testing.kube_emulator import KubeEmulator
from melange.testing.openai_upstream import serve_app, upstream_app

from .conftest import LLMSERVICES
from .schema import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

DEPLOYMENTS, CONFIGMAPS = "apps/v1/deployments", "v1/configmaps"
NAME, NAMESPACE = "arena", "default"
READY_AFTER_S = 3.0  # a new pod is ready this long after it is asked for (image pull, model load)
CLOSED_PORT_URL = "http://127.0.0.1:9"  # nothing listens on the discard port


def arena_service() -> dict:
    """The paper's Arena example (6 x 6 grid, four GPU types, paper-mode routing) at 4 req/s."""
    service = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text()))
    service["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    service["spec"]["router"] = {"replicas": 1}
    return service


def pool_deployments(emulator: KubeEmulator) -> dict[str, dict]:
    """Option -> the service's vLLM Deployment."""
    found = {}
    for _, deployment in emulator.live_objects(DEPLOYMENTS, NAMESPACE):
        name = deployment["metadata"]["name"]
        if name.startswith(NAME + "-") and name != f"{NAME}-router":
            found[name.removeprefix(NAME + "-")] = deployment
    return found


def ready_pods(deployment: dict) -> int:
    """Pods that serve: ready, and not beyond what the Deployment still wants (extra pods are going)."""
    return min(deployment["spec"]["replicas"], (deployment.get("status") or {}).get("readyReplicas") or 0)


def routing_table(emulator: KubeEmulator) -> dict | None:
    config_map = emulator.live(CONFIGMAPS, NAMESPACE, f"{NAME}-routing")
    return json.loads(config_map["data"]["routing.json"]) if config_map else None


def required_replicas(spec: dict, table: dict) -> dict[str, float]:
    """Per pool, the replicas the routed demand needs: sum over buckets of rate x share x weight / max req/s."""
    static = spec["workload"]["static"]
    rate, shares = static["rate"], static["distribution"]
    max_rps = {o["name"]: o["profile"]["inline"]["max_rps"] for o in spec["gpuOptions"]}
    need: dict[str, float] = {}
    for i, row in enumerate(shares):
        for j, share in enumerate(row):
            weights = table["joint_weights"][i][j] if "joint_weights" in table else table["input_weights"][i]
            for pool, weight in weights.items():
                if weight > 0 and share > 0:
                    capacity = max_rps[pool][i][j]
                    need[pool] = need.get(pool, 0.0) + (float("inf") if not capacity else
                                                        rate * share * weight / capacity)
    return need


class Invariant:
    """Checked after every write to the store, once the service has first been ready."""

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self.armed = False
        self.checks = 0
        self.checks_in_moves = 0
        self.steps: list[str] = []
        self.violations: list[str] = []

    def after_write(self) -> None:
        service = self.emulator.live(LLMSERVICES, NAMESPACE, NAME)
        table = routing_table(self.emulator)
        if service is None or table is None:
            return
        status = service.get("status") or {}
        ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
        self.armed = self.armed or ready == "True"
        if not self.armed:
            return  # the first deployment: nothing serves yet, nothing is promised
        move = status.get("move")
        if move and (not self.steps or self.steps[-1] != move["step"]):
            self.steps.append(move["step"])
        deployments = pool_deployments(self.emulator)
        self.checks += 1
        self.checks_in_moves += bool(move)
        for pool, need in required_replicas(service["spec"], table).items():
            have = ready_pods(deployments[pool]) if pool in deployments else 0
            if need > have + 1e-9:
                self.violations.append(f"{pool}: needs {need:.3f} replicas, {have} ready "
                                       f"(step {move['step'] if move else None}, routed {sorted(table['pools'])})")


class Cluster:
    """The Deployment controller, the pods' fake vLLM upstreams and the router's mounted table file,
    following the store as the operator writes it."""

    def __init__(self, emulator: KubeEmulator, table_path: Path) -> None:
        self.emulator, self.table_path = emulator, table_path
        self.upstreams: dict[str, tuple[object, str]] = {}
        self.pending: set[str] = set()
        self.tasks: set[asyncio.Task] = set()

    def _ready_later(self, name: str) -> None:
        async def later() -> None:
            await asyncio.sleep(READY_AFTER_S)
            self.pending.discard(name)
            if self.emulator.live(DEPLOYMENTS, NAMESPACE, name) is not None:
                self.emulator.mark_ready(NAMESPACE, name)
        self.pending.add(name)
        task = asyncio.create_task(later())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def control_deployments(self) -> None:
        """Scale-downs take effect at once; scale-ups become ready READY_AFTER_S later."""
        for _, deployment in self.emulator.live_objects(DEPLOYMENTS, NAMESPACE):
            name = deployment["metadata"]["name"]
            wanted = deployment["spec"]["replicas"]
            ready = (deployment.get("status") or {}).get("readyReplicas") or 0
            if ready > wanted:
                self.emulator.mark_ready(NAMESPACE, name)
            elif ready < wanted and name not in self.pending:
                self._ready_later(name)

    async def follow_pods(self) -> None:
        """An upstream per pool with ready pods; none for a pool without."""
        serving = {pool for pool, d in pool_deployments(self.emulator).items() if ready_pods(d) > 0}
        for pool in serving - set(self.upstreams):
            self.upstreams[pool] = await serve_app(upstream_app(pool))
        for pool in set(self.upstreams) - serving:
            runner, _ = self.upstreams.pop(pool)
            await runner.cleanup()

    def follow_table(self) -> None:
        """The router's table file: the ConfigMap's table with each pool's URL swapped for its upstream."""
        table = routing_table(self.emulator)
        if table is None:
            return
        for pool, entry in table["pools"].items():
            entry["urls"] = [self.upstreams[pool][1] if pool in self.upstreams else CLOSED_PORT_URL]
        text = json.dumps(table, sort_keys=True)
        if not self.table_path.exists() or self.table_path.read_text() != text:
            self.table_path.write_text(text)

    async def run(self) -> None:
        while True:
            wakeup = self.emulator._log_wakeup
            self.control_deployments()
            await self.follow_pods()
            self.follow_table()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wakeup.wait(), 0.5)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for runner, _ in self.upstreams.values():
            await runner.cleanup()


class Clients:
    """Requests of every size bucket through the router, a few at a time, until stopped."""

    def __init__(self, url: str, grid: dict) -> None:
        self.url, self.grid = url, grid
        self.results: list[tuple[int, str]] = []
        self.running = True
        self._rng = random.Random(7)

    def _body(self) -> dict:
        edges_in, edges_out = self.grid["input_edges"], self.grid["output_edges"]
        i, j = self._rng.randrange(len(edges_in)), self._rng.randrange(len(edges_out))
        low_in, low_out = ([0, *edges_in][i], [0, *edges_out][j])
        # Token ids count exactly: the request lands in bucket (i, j).
        return {"prompt": [1] * self._rng.randint(low_in + 1, edges_in[i]),
                "max_tokens": self._rng.randint(low_out + 1, edges_out[j])}

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while self.running and len(self.results) < 20_000:
            async with session.post(f"{self.url}/v1/completions", json=self._body()) as response:
                body = await response.json(content_type=None)
                self.results.append((response.status, body.get("served_by", "")))
            await asyncio.sleep(0.02)


async def poll(check, timeout_s: float = 10.0) -> None:
    """For conditions of the test's own followers, which no store write announces."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.05)


def allocation(emulator: KubeEmulator) -> dict[str, int]:
    return ((emulator.live(LLMSERVICES, NAMESPACE, NAME) or {}).get("status") or {}).get("allocation") or {}


def settled(emulator: KubeEmulator, generation: int) -> bool:
    """The operator has taken in `generation`, no move is under way, it says Ready, and the pools are as
    allocated and ready."""
    service = emulator.live(LLMSERVICES, NAMESPACE, NAME) or {}
    status = service.get("status") or {}
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    if status.get("observedGeneration") != generation or status.get("move") or ready != "True":
        return False
    deployments = pool_deployments(emulator)
    wanted = {name: count for name, count in (status.get("allocation") or {}).items() if count}
    return ({pool: d["spec"]["replicas"] for pool, d in deployments.items()} == wanted
            and all(ready_pods(d) == d["spec"]["replicas"] for d in deployments.values()))


async def test_ready_capacity_covers_the_routed_demand_at_every_step(kube, operator_runner, tmp_path):
    invariant = Invariant(kube.emulator)
    kube.emulator.write_hooks.append(invariant.after_write)

    cluster = Cluster(kube.emulator, tmp_path / "routing.json")
    follower = asyncio.create_task(cluster.run())
    config = OperatorConfig(drain_s=2.0)
    router_runner = None
    try:
        async with operator_runner(handlers, namespaces=[NAMESPACE], memo=kopf.Memo(config=config)):
            service = arena_service()
            await kube.create(service)
            await kube.wait_for(lambda: settled(kube.emulator, 1), timeout_s=60)
            assert allocation(kube.emulator) == {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}  # the paper's Table 3
            await poll(lambda: cluster.table_path.exists() and CLOSED_PORT_URL not in cluster.table_path.read_text())
            router = Router(cluster.table_path, model_name=NAME, seed=3)
            router_runner, router_url = await serve_app(build_app(router, reload_interval_s=0.05), **SERVER_OPTIONS)
            grid = service["spec"]["workload"]["grid"]
            clients = Clients(router_url, {"input_edges": grid["inputEdges"], "output_edges": grid["outputEdges"]})
            async with aiohttp.ClientSession() as session:
                workers = [asyncio.create_task(clients.worker(session)) for _ in range(4)]
                mixes = [allocation(kube.emulator)]
                # Three moves, each growing one pool and dropping another:
                edits = [{"workload": {"static": {"rate": 1.0}}},  # 1 x L4 + 1 x A10G (Table 3, 1 req/s)
                         {"gpuOptions": _priced(service, {"l4": 3.0})},  # L4 dearer: 2 x A10G
                         {"gpuOptions": _priced(service, {"l4": 3.0, "a10g": 4.0})}]  # A10G dearer: 1 x A100
                for generation, edit in enumerate(edits, start=2):
                    await kube.patch(LLMSERVICES, NAME, {"spec": edit}, namespace=NAMESPACE)
                    await kube.wait_for(lambda: settled(kube.emulator, generation), timeout_s=90)
                    mixes.append(allocation(kube.emulator))
                clients.running = False
                await asyncio.gather(*workers)
            served = {name for _, name in clients.results}
            print(f"moves {mixes}; {invariant.checks} checks ({invariant.checks_in_moves} during moves); "
                  f"{len(clients.results)} requests, served by {sorted(served)}")
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await cluster.close()
        if router_runner is not None:
            await router_runner.cleanup()

    assert invariant.violations == []
    # Each edit moved through every step to a mix that grows one pool and drops another (where
    # breaking before making would show).
    for old, new in zip(mixes, mixes[1:]):
        assert any(new[n] > old[n] for n in new) and any(new[n] == 0 < old[n] for n in new), (old, new)
    assert invariant.steps == ["scaling-up", "switching", "draining", "scaling-down"] * len(edits)
    assert invariant.checks_in_moves >= 12
    # No request failed, none needed a retry, and the new pools took traffic once switched to.
    assert clients.results and all(status == 200 for status, _ in clients.results)
    pool_errors = sum(sample.value for sample in router.metrics.errors.collect()[0].samples
                      if sample.name.endswith("_total"))
    assert pool_errors == 0 and router.metrics.no_pool._value.get() == 0
    assert {n for mix in mixes[1:] for n, c in mix.items() if c} <= served


def _priced(service: dict, prices: dict[str, float]) -> list[dict]:
    options = copy.deepcopy(service["spec"]["gpuOptions"])
    for option in options:
        option["pricePerHour"] = prices.get(option["name"], option["pricePerHour"])
    return options
