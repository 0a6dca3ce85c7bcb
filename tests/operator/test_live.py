"""The operator following live traffic: a real Prometheus (1 s scrape) scraping the traffic player,
the emulated Kubernetes API and the real kopf operator, in real time (Prometheus and the player run
on the wall clock, so the loop clock is not faked here).

One 2 x 1 grid keeps every expected mix obvious by hand. Input <= 2000 tokens is "short", 2000-10000
"long"; every request asks <= 500 output tokens. The traffic player's chat mix is all short, its
documents mix all long (inputs 2100-7900), and both end on vLLM's histogram edges (2000, 10000), so
the measured mix is exact. Max req/s per replica at the SLO (targetUtilisation 1):

    service "flow":   small $1.0/h  short 10, long -     warm $0.5/h (minReplicas 1)  short 0.01, long -
                      big   $4.0/h  short 20, long 10    (warm is a floor: any traffic needs more)
      chat at 6 req/s:      one small (the warm one is there anyway)      -> 1 small + 1 warm  $1.5/h
      documents at 6 req/s: only big serves long, one carries 6 <= 10     -> 1 big + 1 warm    $4.5/h
      no traffic:           the floor                                     -> 1 warm            $0.5/h
      (the operator sizes for the 97.7% upper bound of each 10 s window's count: 60 requests give
      7.8 req/s, still one replica either way)
    service "steady": small $1.0/h  short 103
      chat at 110 req/s:    sized at 117 req/s (1100 requests in the 10 s window, the 97.7% upper
                            bound 1100 + 2 + 2 sqrt(1101) = 1168): two smalls  -> $2.0/h
      chat at 90 req/s:     sized at 96 req/s, one small would do ($1.0/h); but at the rebalance bound
                            (900 + 18 + 6 sqrt(909) = 1099 requests, 110 req/s) it would not: kept
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import kopf
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, start_http_server

from melange.operator import handlers
from melange.operator.handlers import OperatorConfig
from melange.operator.core.status import from_iso
from melange.solver.metrics.traffic_player import CHAT, DOCUMENTS, Stream, VllmMetrics
from melange.testing.kube_emulator import KubeEmulator
from melange.testing.ports import free_port
from melange.testing.prometheus_server import PrometheusServer

from .conftest import LLMSERVICES

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

DEPLOYMENTS, CONFIGMAPS = "apps/v1/deployments", "v1/configmaps"
GRID = {"input_edges": [2000, 10000], "output_edges": [500]}
CANNOT = None  # no rate meets the SLO


def option(name: str, gpu: str, price: float, short: float, long: float | None, **extra) -> dict:
    profile = {"model": "demo-7b", "gpu": gpu, "gpus_per_replica": 1, "slo": {"tpot_ms": 100}, "grid": GRID,
               "max_rps": [[short], [long]]}
    return {"name": name, "gpu": gpu, "pricePerHour": price, "profile": {"inline": profile}, **extra}


FLOW_OPTIONS = [option("small", "L4", 1.0, 10.0, CANNOT), option("big", "A100", 4.0, 20.0, 10.0),
                option("warm", "T4", 0.5, 0.01, CANNOT, minReplicas=1)]
STEADY_OPTIONS = [option("small", "L4", 1.0, 103.0, CANNOT)]
CHAT_MIX = {"small": 1, "big": 0, "warm": 1}
DOCUMENTS_MIX = {"small": 0, "big": 1, "warm": 1}
FLOOR = {"small": 0, "big": 0, "warm": 1}
STEADY_MIX = {"small": 2}


def live_service(name: str, options: list[dict], prometheus_url: str, min_savings: float, min_requests: int = 10) -> dict:
    return {"apiVersion": "melange.ai/v1alpha1", "kind": "LLMService",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": name, "slo": {"tpotMs": 100}, "gpuOptions": options,
                     "workload": {"source": "prometheus",
                                  "prometheus": {"url": prometheus_url, "window": "10s", "minRequests": min_requests}},
                     "reallocation": {"interval": "5s", "cooldown": "5s", "minSavingsPercent": min_savings,
                                      "targetUtilisation": 1.0},
                     "router": {"replicas": 1}}}


class Recorder:
    """Every write to the store, as the operator made it: per service, each move step seen in status, and
    after each write the pool replicas (spec) and the pools the routing table sends traffic to."""

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self.steps: dict[str, list[str]] = {}
        self.snapshots: dict[str, list[tuple[str | None, dict[str, int], set[str]]]] = {}

    def after_write(self) -> None:
        for service in [obj for _, obj in self.emulator.live_objects(LLMSERVICES, "default")]:
            name = service["metadata"]["name"]
            move = (service.get("status") or {}).get("move")
            step = move["step"] if move else None
            steps = self.steps.setdefault(name, [])
            if step and (not steps or steps[-1] != step):
                steps.append(step)
            table = self.emulator.live(CONFIGMAPS, "default", f"{name}-routing")
            routed = set(json.loads(table["data"]["routing.json"])["pools"]) if table else set()
            self.snapshots.setdefault(name, []).append((step, pools(self.emulator, name), routed))


def pools(emulator: KubeEmulator, service: str) -> dict[str, int]:
    """Option -> spec.replicas of the service's vLLM Deployments."""
    found = {}
    for _, deployment in emulator.live_objects(DEPLOYMENTS, "default"):
        name = deployment["metadata"]["name"]
        if name.startswith(service + "-") and not name.endswith("-router"):
            found[name.removeprefix(service + "-")] = deployment["spec"]["replicas"]
    return found


@pytest.fixture
def recorder(kube) -> Recorder:
    recorder = Recorder(kube.emulator)
    kube.emulator.write_hooks.append(recorder.after_write)
    return recorder


class Traffic:
    """One exporter of vLLM metrics for two services, evenly spaced arrivals (so the rate over the
    window is steady), and the Prometheus scraping it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = VllmMetrics(self.registry)
        self.exporter_port = free_port()
        self.server, _ = start_http_server(self.exporter_port, addr="127.0.0.1", registry=self.registry)
        self.flow = Stream(self.metrics, "flow", 6.0, CHAT, seed=1, poisson=False)
        self.steady = Stream(self.metrics, "steady", 110.0, CHAT, seed=2, poisson=False)
        self.prometheus = PrometheusServer([f"127.0.0.1:{self.exporter_port}"])

    async def start(self) -> None:
        await asyncio.to_thread(self.prometheus.wait_until_scraping)
        self.flow.start()
        self.steady.start()

    async def restart_prometheus(self) -> None:
        """A new Prometheus (empty storage) on the port of the stopped one."""
        self.prometheus = PrometheusServer([f"127.0.0.1:{self.exporter_port}"], port=self.prometheus.port)
        await asyncio.to_thread(self.prometheus.wait_until_scraping)

    def close(self) -> None:
        self.flow.stop()
        self.steady.stop()
        self.prometheus.stop()
        self.server.shutdown()
        self.server.server_close()


@pytest_asyncio.fixture
async def traffic():
    traffic = Traffic()
    try:
        await traffic.start()
        yield traffic
    finally:
        traffic.close()


def status(kube, name: str) -> dict:
    return (kube.object(LLMSERVICES, name, "default") or {}).get("status") or {}


def condition(kube, name: str, kind: str) -> dict:
    return next((c for c in status(kube, name).get("conditions", []) if c["type"] == kind), {})


def settled(kube, name: str, mix: dict[str, int]) -> Callable[[], bool]:
    """The service runs `mix`: in status, with no move under way, and in its Deployments."""
    def check() -> bool:
        current = status(kube, name)
        return (current.get("allocation") == mix and not current.get("move")
                and pools(kube.emulator, name) == {k: v for k, v in mix.items() if v})
    return check


def reasons(kube, name: str) -> list[str]:
    return [event["reason"] for event in kube.events(name, "default")]


async def poll(check: Callable[[], bool], timeout_s: float) -> None:
    """For conditions no store write announces (the operator's own counters)."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.2)


async def test_the_operator_follows_live_traffic(kube, operator_runner, recorder, traffic):
    kube.emulator.auto_ready = True  # the Deployment controller: pods ready as soon as asked for
    config = OperatorConfig(drain_s=1.0)
    unavailable = config.metrics.errors.labels("MetricsUnavailable")
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started, 1)
        print(f"{timings[name]:6.1f} s  {name}")

    async with operator_runner(handlers, namespaces=["default"], memo=kopf.Memo(config=config)):
        url = traffic.prometheus.url
        # 30 requests at least before the first allocation (half of flow's 10 s window): it is sized at the
        # rate's upper bound for its count (operator/core/noise.py: 1.44 x the rate at 30 requests, 1.86 x
        # at 10, which at 6 req/s is 2 x small), and at 60 requests a window rebalances only on a saving
        # that holds at 2.1 x the rate: a first mix sized on 10 requests would stay.
        await kube.create(live_service("flow", FLOW_OPTIONS, url, min_savings=5, min_requests=30))
        await kube.create(live_service("steady", STEADY_OPTIONS, url, min_savings=5, min_requests=30))

        # (a) chat traffic: the chat mix; the other service its own mix.
        await kube.wait_for(settled(kube, "flow", CHAT_MIX), timeout_s=60)
        await kube.wait_for(settled(kube, "steady", STEADY_MIX), timeout_s=60)
        assert condition(kube, "flow", "MetricsAvailable")["status"] == "True"
        assert status(kube, "flow")["workload"]["source"] == "prometheus"
        lap("a: chat mix deployed")
        steady_moves = reasons(kube, "steady").count("MoveStarted")
        # What start-up did stays out of (b): with minRequests 10 a first reading of a few seconds of
        # traffic may deploy another mix and move to the chat mix once the window fills.
        flow_steps, flow_snapshots = len(recorder.steps.get("flow", [])), len(recorder.snapshots["flow"])
        flow_started, flow_stepped = reasons(kube, "flow").count("MoveStarted"), reasons(kube, "flow").count("MoveStep")

        # (b) + (d) + (f): flow's traffic turns into documents while steady's rate dips 18%.
        traffic.flow.set_mix(DOCUMENTS)
        traffic.steady.set_rate(90.0)
        await kube.wait_for(lambda: status(kube, "flow").get("move"), timeout_s=30)
        await kube.wait_for(settled(kube, "flow", DOCUMENTS_MIX), timeout_s=90)
        lap("b: documents mix deployed")
        # Make before break: one move, in order, the big pool up before the small one goes.
        assert recorder.steps["flow"][flow_steps:] == ["scaling-up", "switching", "draining", "scaling-down"]
        history = [(replicas, routed) for _, replicas, routed in recorder.snapshots["flow"][flow_snapshots:]]
        big_up = next(k for k, (replicas, _) in enumerate(history) if replicas.get("big"))
        switched = next(k for k, (_, routed) in enumerate(history) if routed == {"big", "warm"})
        small_down = next(k for k, (replicas, _) in enumerate(history) if k > big_up and not replicas.get("small"))
        assert big_up < switched < small_down
        assert all(routed == {"small", "warm"} for _, routed in history[big_up:switched])
        # kopf posts Events in the background: wait for the last one.
        await kube.wait_for(lambda: any(e["message"].endswith("1 x small + 1 x warm ($1.50/h) -> 1 x big + 1 x warm "
                                                              "($4.50/h)") for e in kube.events("flow", "default")
                                        if e["reason"] == "Reallocated"), timeout_s=10)
        flow_reasons = reasons(kube, "flow")
        assert flow_reasons.count("MoveStarted") == flow_started + 1 and flow_reasons.count("MoveStep") == flow_stepped + 3
        # (d) the dip would save 50% at its sized rate, nothing at its rebalance bound: kept, nothing touched.
        await kube.wait_for(lambda: status(kube, "steady").get("lastDecision", {}).get("reason", "").startswith(
            "kept: no saving at up to 1"), timeout_s=30)
        assert "upper bound of the " in status(kube, "steady")["lastDecision"]["reason"]
        assert status(kube, "steady")["recommended"] == {"small": 1}
        lap("d: steady kept its mix")
        assert settled(kube, "steady", STEADY_MIX)()
        assert reasons(kube, "steady").count("MoveStarted") == steady_moves
        assert not any(step for step, _, _ in recorder.snapshots["steady"])

        # (c) Prometheus stops: nothing changes for two passes of each service, MetricsAvailable=False.
        before = {name: pools(kube.emulator, name) for name in ("flow", "steady")}
        traffic.prometheus.stop()
        for name in ("flow", "steady"):
            await kube.wait_for(lambda: condition(kube, name, "MetricsAvailable").get("status") == "False",
                                timeout_s=30)
        failed = unavailable._value.get()
        await poll(lambda: unavailable._value.get() >= failed + 4, timeout_s=40)
        lap("c: Prometheus down, passes kept everything")
        assert {name: pools(kube.emulator, name) for name in ("flow", "steady")} == before
        assert status(kube, "flow")["allocation"] == DOCUMENTS_MIX and status(kube, "steady")["allocation"] == STEADY_MIX
        assert "MetricsUnavailable" in reasons(kube, "flow")
        # ... and recovers when it is back.
        await traffic.restart_prometheus()
        for name in ("flow", "steady"):
            await kube.wait_for(lambda: condition(kube, name, "MetricsAvailable").get("status") == "True",
                                timeout_s=40)
        lap("c: metrics back")
        # The first reading after the restart spans a few seconds of a new series: it may move a service
        # (steady's 2 x small to 1 x small, which serves its 90 req/s at 103), never below its traffic.
        assert pools(kube.emulator, "flow").get("big", 0) >= 1 and pools(kube.emulator, "steady").get("small", 0) >= 1, \
            [(name, status(kube, name).get("allocation"), [(e["reason"], e["message"]) for e in
                                                           kube.events(name, "default")][-4:]) for name in ("flow", "steady")]

    print("timings (s since start):", timings)


async def test_no_traffic_falls_to_the_floor_after_the_cooldown(kube, operator_runner, traffic):
    kube.emulator.auto_ready = True
    async with operator_runner(handlers, namespaces=["default"], memo=kopf.Memo(config=OperatorConfig(drain_s=1.0))):
        # 30 requests before the first allocation (test_the_operator_follows_live_traffic says why); on the
        # way down, the windows with fewer count their rate with the chat mix
        service = live_service("flow", FLOW_OPTIONS, traffic.prometheus.url, min_savings=5, min_requests=30)
        service["spec"]["reallocation"]["cooldown"] = "20s"
        await kube.create(service)
        await kube.wait_for(settled(kube, "flow", CHAT_MIX), timeout_s=60)
        deployed_at = from_iso(status(kube, "flow")["lastChange"])
        traffic.flow.set_rate(0.0)
        # Fixed, metrics stay available all along; broken, they go unavailable within a window: stop there.
        await kube.wait_for(lambda: settled(kube, "flow", FLOOR)()
                            or condition(kube, "flow", "MetricsAvailable").get("status") == "False", timeout_s=90)
        assert condition(kube, "flow", "MetricsAvailable")["status"] == "True", condition(kube, "flow",
                                                                                          "MetricsAvailable")
        assert settled(kube, "flow", FLOOR)()
        current = status(kube, "flow")
        assert current["lastDecision"]["kind"] == "rebalance"
        assert from_iso(current["lastDecision"]["time"]) - deployed_at >= 20  # not before the cooldown
        assert "no requests" in condition(kube, "flow", "MetricsAvailable")["message"]


async def test_a_trickle_counts_its_rate_with_the_last_trusted_mix(kube, operator_runner, traffic):
    """Chat at 6 req/s, then at 1 req/s: 10 requests in a 10 s window, fewer than minRequests 30. The
    rate is still counted (its bounds as wide as 10 requests make them: 18.6 requests, 1.86 req/s, one
    small) with the chat mix of the windows before, so metrics stay available and the mix stays."""
    kube.emulator.auto_ready = True
    async with operator_runner(handlers, namespaces=["default"], memo=kopf.Memo(config=OperatorConfig(drain_s=1.0))):
        await kube.create(live_service("flow", FLOW_OPTIONS, traffic.prometheus.url, min_savings=5, min_requests=30))
        await kube.wait_for(settled(kube, "flow", CHAT_MIX), timeout_s=60)
        traffic.flow.set_rate(1.0)
        await kube.wait_for(lambda: "too few for a size mix" in condition(kube, "flow", "MetricsAvailable")
                            .get("message", "") or condition(kube, "flow", "MetricsAvailable").get("status") == "False",
                            timeout_s=40)
        available = condition(kube, "flow", "MetricsAvailable")
        assert available["status"] == "True", available
        assert status(kube, "flow")["workload"]["rate"] == pytest.approx(1.0, rel=0.3)
        assert settled(kube, "flow", CHAT_MIX)()


async def test_a_step_up_is_met_from_the_scale_up_window_before_the_window_catches_up(kube, operator_runner, traffic):
    """Chat at 6 req/s over a 30 s window, then 18 req/s. The 5 s scale-up window shows it at the first
    pass that reads only the new rate (90 requests: at least 11.1 req/s at 3 sigma, more than one small's
    10), while the 30 s window's lower bound stays under 10 req/s until about 15 s after the step: the
    first move is the scale-up window's, sized for its upper bound (111 requests, 22 req/s: 3 x small)."""
    kube.emulator.auto_ready = True
    async with operator_runner(handlers, namespaces=["default"], memo=kopf.Memo(config=OperatorConfig(drain_s=1.0))):
        service = live_service("flow", FLOW_OPTIONS, traffic.prometheus.url, min_savings=5, min_requests=30)
        service["spec"]["workload"]["prometheus"].update({"window": "30s", "scaleUpWindow": "5s"})
        await kube.create(service)
        await kube.wait_for(settled(kube, "flow", CHAT_MIX), timeout_s=90)
        traffic.flow.set_rate(18.0)
        await kube.wait_for(lambda: (status(kube, "flow").get("lastDecision") or {}).get("kind") == "scale-up",
                            timeout_s=40)
        decision = status(kube, "flow")["lastDecision"]
        assert decision["reason"].startswith("over the last 5s: demand exceeds what runs"), decision
        await kube.wait_for(lambda: pools(kube.emulator, "flow").get("small", 0) >= 2 and not status(kube, "flow").get("move"),
                            timeout_s=60)
