"""The demo's scenario: traffic, Prometheus, the emulated API and the real operator in one process,
watched until the duration ends; every process and server it started is stopped on the way out.

Without Prometheus the demo reads the player's own counts and writes them into the LLMService as a
static workload whenever the mix or the rate moved enough (a spec edit is a request the operator
follows at once, so small wiggles are not written).
"""
from __future__ import annotations

import asyncio
import collections
import copy
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from melange.demo.view import Snapshot, View
from melange.operator import handlers
from melange.operator.handlers import OperatorConfig
from melange.operator.plan_command import CRD_FILE
from melange.solver.buckets import BucketGrid
from melange.solver.metrics.traffic_player import MIXES, Stream, VllmMetrics
from melange.testing.kopf_runner import start_operator
from melange.testing.kube_emulator import crd_manifest, serve_emulator, write_kubeconfig
from melange.testing.prometheus_server import PrometheusServer

NAMESPACE, NAME = "default", "llama3-demo"
MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
GRID = BucketGrid((250, 1000, 2000, 4000, 8000), (100, 250, 500))
LLMSERVICES, DEPLOYMENTS = "melange.ai/v1alpha1/llmservices", "apps/v1/deployments"
OWNED = ("apps/v1/deployments", "v1/services", "v1/configmaps")
DRAIN_S = 10.0  # the demo's pools are imaginary: a short drain keeps the move watchable


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 180.0
    rate: float = 4.0
    mix: str = "chat"
    then: str = "documents"
    switch_after_s: float = 60.0
    window_s: float = 30.0
    output_dir: Path | None = None
    use_prometheus: bool = True
    live_view: bool = False


@dataclass
class DemoResult:
    """What the demo saw: each allocation it ran, when (seconds from the start), and where it left the YAML."""

    output_dir: Path
    allocations: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    workload_source: str = ""
    notes: list[str] = field(default_factory=list)
    static_writes: int = 0  # without Prometheus: the spec writes of the player's counts (the create included)
    generation: int | None = None  # the LLMService's metadata.generation at the end

    def summary(self) -> str:
        lines = [f"workload read from {self.workload_source}"] + [f"note: {n}" for n in self.notes]
        if self.static_writes:
            lines.append(f"note: the final LLMService has spec.workload source: static at generation "
                         f"{self.generation}: without Prometheus the demo wrote the player's counts into the spec "
                         f"{self.static_writes} time(s) (created, then patched whenever the rate or mix moved), and "
                         f"each spec edit is a new generation")
        lines += [f"{at:6.0f} s  {', '.join(f'{k} x{v}' for k, v in mix.items() if v) or 'nothing'}"
                  for at, mix in self.allocations]
        lines.append(f"final objects as YAML in {self.output_dir}")
        return "\n".join(lines)


def service_manifest(window_s: float, prometheus_url: str | None, static: dict[str, Any] | None) -> dict[str, Any]:
    """The demo's LLMService: Llama-3-8B on L4, A10G and H100 with estimated profiles. Chat traffic at
    4 req/s is cheapest on 1 x L4 + 2 x A10G; long documents on 1 x A10G + 2 x H100."""
    workload: dict[str, Any] = {"grid": {"inputEdges": list(GRID.input_edges), "outputEdges": list(GRID.output_edges)}}
    if prometheus_url:
        workload.update(source="prometheus", prometheus={"url": prometheus_url, "window": f"{window_s:.0f}s",
                                                         "minRequests": 20})
    else:
        workload.update(source="static", static=static)
    return {"apiVersion": "melange.ai/v1alpha1", "kind": "LLMService",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"model": MODEL, "catalogModel": "llama-3-8b", "slo": {"tpotMs": 120},
                     "gpuOptions": [{"name": "l4", "gpu": "l4"}, {"name": "a10g", "gpu": "a10g"},
                                    {"name": "h100", "gpu": "h100"}],
                     "workload": workload,
                     "reallocation": {"interval": "5s", "cooldown": f"{window_s:.0f}s", "minSavingsPercent": 5,
                                      "targetUtilisation": 0.85}}}


class CountingMetrics(VllmMetrics):
    """The player's metrics, also kept as (time, input, output) for reading the traffic directly."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, router=True)
        self.seen: collections.deque[tuple[float, int, int]] = collections.deque()

    def record(self, model_name: str, input_tokens: int, output_tokens: int) -> None:
        super().record(model_name, input_tokens, output_tokens)
        self.seen.append((time.monotonic(), input_tokens, output_tokens))

    def window(self, seconds: float) -> tuple[float, list[list[float]]]:
        """Rate and mix on the demo's grid over the last `seconds`."""
        cutoff = time.monotonic() - seconds
        while self.seen and self.seen[0][0] < cutoff:
            self.seen.popleft()
        counts = [[0] * GRID.shape[1] for _ in range(GRID.shape[0])]
        for _, tokens_in, tokens_out in list(self.seen):
            i, j = GRID.input_bucket(tokens_in), GRID.output_bucket(tokens_out)
            if i is not None and j is not None:
                counts[i][j] += 1
        total = sum(map(sum, counts))
        if total == 0:
            return 0.0, [[1.0 / (GRID.shape[0] * GRID.shape[1])] * GRID.shape[1]] * GRID.shape[0]
        return total / seconds, [[round(c / total, 3) for c in row] for row in counts]


def _moved(old: dict[str, Any] | None, rate: float, mix: list[list[float]]) -> bool:
    if old is None:
        return True
    distance = 0.5 * sum(abs(a - b) for row_a, row_b in zip(old["distribution"], mix) for a, b in zip(row_a, row_b))
    return distance > 0.2 or abs(rate - old["rate"]) > 0.25 * max(old["rate"], 0.1)


def _normalised(mix: list[list[float]]) -> list[list[float]]:
    total = sum(map(sum, mix))
    return [[round(v / total, 4) for v in row] for row in mix]


async def _post(session: aiohttp.ClientSession, url: str, manifest: dict[str, Any]) -> None:
    async with session.post(url, json=manifest) as response:
        if response.status >= 400:
            raise RuntimeError(f"POST {url}: {response.status} {await response.text()}")


def _snapshot(emulator: Any, started: float, traffic: str, source: str, rate: float) -> Snapshot:
    service = emulator.live(LLMSERVICES, NAMESPACE, NAME) or {}
    deployments = {d["metadata"]["name"]: d for _, d in emulator.live_objects(DEPLOYMENTS, NAMESPACE)}
    events = [e for _, e in emulator.live_objects("v1/events", NAMESPACE)
              if e.get("involvedObject", {}).get("name") == NAME]
    return Snapshot(time.monotonic() - started, traffic, source, rate, service.get("status") or {}, deployments,
                    [f"{e.get('reason')}: {e.get('message')}" for e in events])


def _dump(emulator: Any, folder: Path) -> None:
    """The final objects, as `kubectl get -o yaml` would show them, one file per kind."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {"llmservices.yaml": LLMSERVICES, "deployments.yaml": OWNED[0], "services.yaml": OWNED[1],
             "configmaps.yaml": OWNED[2], "events.yaml": "v1/events"}
    for filename, resource in kinds.items():
        items = [copy.deepcopy(o) for _, o in emulator.live_objects(resource, NAMESPACE)]
        (folder / filename).write_text(yaml.safe_dump_all(items, sort_keys=False))


def run_demo(options: DemoOptions) -> DemoResult:
    """Run the demo to its end (or Ctrl-C) and return what it saw."""
    return asyncio.run(_run(options))


async def _run(options: DemoOptions) -> DemoResult:
    folder = options.output_dir or Path(tempfile.mkdtemp(prefix="melange-demo-"))
    work = Path(tempfile.mkdtemp(prefix="melange-demo-work-"))
    result = DemoResult(folder)
    registry = CollectorRegistry()
    metrics = CountingMetrics(registry)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    player = f"127.0.0.1:{server.server_address[1]}"
    stream = Stream(metrics, MODEL, options.rate, MIXES[options.mix], seed=7)
    prometheus = None
    operator = None
    view = View(live=options.live_view)
    previous_kubeconfig = os.environ.get("KUBECONFIG")
    try:
        if options.use_prometheus and shutil.which("prometheus"):
            prometheus = PrometheusServer([player])
            await asyncio.to_thread(prometheus.wait_until_scraping)
            result.workload_source = f"a real Prometheus ({prometheus.url}) scraping the traffic player"
        else:
            result.workload_source = "the traffic player's counts, read directly"
            if options.use_prometheus:
                view.note("no prometheus binary found (Debian: apt-get install prometheus): reading the player's "
                          "counts directly and writing them into the LLMService")
        stream.start()
        async with serve_emulator(auto_ready=True) as emulator, aiohttp.ClientSession() as session:
            os.environ["KUBECONFIG"] = str(write_kubeconfig(emulator.url, work / "kubeconfig"))
            crd = yaml.safe_load(CRD_FILE.read_text()) if CRD_FILE.is_file() else \
                crd_manifest("melange.ai", "v1alpha1", "llmservices", "LLMService", short_names=["llms"])
            await _post(session, f"{emulator.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            operator = await start_operator(handlers, namespaces=[NAMESPACE],
                                            memo=kopf.Memo(config=OperatorConfig(drain_s=DRAIN_S)))
            static = None
            if prometheus is None:
                await asyncio.sleep(min(options.window_s / 3, 5))  # a first sample of the traffic
                rate, mix = metrics.window(options.window_s)
                static = {"rate": round(rate, 2), "distribution": _normalised(mix)}
            await _post(session, f"{emulator.url}/apis/melange.ai/v1alpha1/namespaces/{NAMESPACE}/llmservices",
                        service_manifest(options.window_s, prometheus.url if prometheus else None, static))
            result.static_writes = 0 if prometheus else 1
            await _watch(options, emulator, session, metrics, stream, operator, static, prometheus is not None,
                         view, result)
            _dump(emulator, folder)
            final = emulator.live(LLMSERVICES, NAMESPACE, NAME) or {}
            result.generation = (final.get("metadata") or {}).get("generation")
            await operator.stop()
            operator = None
    finally:
        view.close()
        if operator is not None:
            await operator.stop()
        stream.stop()
        if prometheus is not None:
            prometheus.stop()
        server.shutdown()
        server.server_close()
        shutil.rmtree(work, ignore_errors=True)
        if previous_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous_kubeconfig
    return result


async def _watch(options: DemoOptions, emulator: Any, session: aiohttp.ClientSession, metrics: CountingMetrics,
                 stream: Stream, operator: Any, static: dict[str, Any] | None, live: bool, view: View,
                 result: DemoResult) -> None:
    """Show the state every second until the duration ends, switching the traffic on the way."""
    started = time.monotonic()
    traffic = options.mix
    next_write = started + options.window_s / 3
    url = f"{emulator.url}/apis/melange.ai/v1alpha1/namespaces/{NAMESPACE}/llmservices/{NAME}"
    seen_events: set[str] = set()
    try:
        while time.monotonic() - started < options.duration_s and not operator.task.done():
            now = time.monotonic()
            if traffic != options.then and now - started >= options.switch_after_s:
                stream.set_mix(MIXES[options.then])
                traffic = options.then
            rate, mix = metrics.window(options.window_s)
            if not live and now >= next_write:
                next_write = now + options.window_s / 3
                if _moved(static, rate, mix):
                    static = {"rate": round(rate, 2), "distribution": _normalised(mix)}
                    patch = {"spec": {"workload": {"static": static}}}
                    async with session.patch(url, json=patch,
                                             headers={"Content-Type": "application/merge-patch+json"}):
                        pass
                    result.static_writes += 1
            snapshot = _snapshot(emulator, started, traffic, result.workload_source, rate)
            allocation = snapshot.status.get("allocation")
            if allocation and (not result.allocations or result.allocations[-1][1] != allocation):
                result.allocations.append((snapshot.elapsed_s, dict(allocation)))
            for event in snapshot.events:
                if event not in seen_events:
                    seen_events.add(event)
                    result.events.append(event)
            view.show(snapshot)
            await asyncio.sleep(1.0)
    except asyncio.CancelledError:  # Ctrl-C: stop as at the end
        pass
