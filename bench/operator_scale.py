"""How long one reconcile pass of the operator takes (read the cluster, query Prometheus, solve, plan, diff,
apply), how much CPU and memory the operator spends per service, and how many API calls a pass makes,
with 1, 10, 100 and 1,000 LLMServices.

The operator is the real one (kopf, the `kubernetes` client, HiGHS) in this process; the emulated
Kubernetes API (testing/kube_emulator.py: it holds 1,000 services and their objects in memory), the
traffic player (vLLM- and router-named metrics, one model name per service, 4 req/s of chat traffic
each) and a real Prometheus (scraping every 5 s) run in processes of their own, so this process's CPU
time is the operator's alone. Every service reads its workload from Prometheus (`workload.source:
prometheus`, window 5m); even-numbered services use the paper's Arena example (inline profiles, 6x6
grid, 4 GPU types), odd-numbered ones the Llama-3-8B example (catalog estimates, 3x3 grid, 3 types).
Pools become ready as soon as they are written; moves drain for 10 s. Services of one row are created
together, in one burst.

A pass's wall time is one `reconcile_service` (what `melange_reconcile_seconds` observes, plus taking
the service's lock and waiting for one of the operator's pass slots); the per-phase times come from
timing wrappers around the handler's own calls (cluster reads, the Prometheus query, the pure reconcile
with its solves, the apply), in wall and thread CPU time. Measurement starts once every service has
been solved and ready (first passes excluded). CPU is all of this process's CPU in the window (kopf's
watches, the services' daemons, status patches and Events included): per pass, and per service per interval.
Memory per service is the growth of this process's resident memory from the operator's start (no
service yet) to the window's end, over the services (with one service it is mostly what the first
pass loads: the catalog, the solver). API calls per pass are the operator's calls the
emulator counted in the window (watches left out) over the passes. With fewer than 100 services the
interval is 5 s (for enough samples); with 100 and more it is the default 60 s, and the goals are
checked there: every service reconciled in each interval, within one core's 60 CPU seconds.

Usage: python bench/operator_scale.py [--services 1,10,100,1000] [--window 30] [--long-window 130] [--static] [--no-memo]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import copy
import gc
import math
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import kopf
import requests
import yaml
from common import ROOT, cpu_seconds, print_table
from prometheus_client import CollectorRegistry, start_http_server

from melange.operator import handlers
from melange.operator.handlers import TICK_S, OperatorConfig
from melange.operator.kube import Cluster, load_config
from melange.operator.live_workload import PrometheusDefaults
from melange.solver.memo import SolveMemo
from melange.solver.metrics.metric_names import MODEL_LABEL, VLLM_REQUEST_SUCCESS, vllm_name_regex
from melange.solver.metrics.traffic_player import CHAT, Stream, VllmMetrics
from melange.testing.kopf_runner import start_operator
from melange.testing.kube_emulator import FIXTURE_AGENT, serve_emulator, write_kubeconfig
from melange.testing.ports import free_port
from melange.testing.prometheus_server import PrometheusServer

RATE = 4.0  # req/s per service
MIN_REQUESTS = 50  # the services' prometheus.minRequests (4 req/s reach it in 13 s)
SCRAPE_INTERVAL_S = 5.0
DRAIN_S = 10.0  # --drain: the first minutes' noisy mixes start a few moves; they should not hold up the start
EXAMPLES = [yaml.safe_load((ROOT / "examples" / "operator" / name).read_text())
            for name in ("arena-llama2-7b.yaml", "llama-3-8b.yaml")]
LLMSERVICES = "/apis/melange.ai/v1alpha1/namespaces/{namespace}/llmservices"
PHASES = ("cluster reads", "metrics query", "solve + plan", "apply")
SIDES = ("API emulator", "Prometheus")  # the other processes, their CPU per cycle shown for scale


def model_name(k: int) -> str:
    return f"bench/model-{k:03d}"


# ----- the cluster and the traffic, each in its own process -----

def run_emulator(kubeconfig: str, pipe: Connection, queries: Connection) -> None:
    """Serve the emulated API with the LLMService CRD (pools ready as soon as written) until killed;
    sends its URL once up, then answers each message on `queries` with the calls counted so far."""
    asyncio.run(_emulator(kubeconfig, pipe, queries))


async def _emulator(kubeconfig: str, pipe: Connection, queries: Connection) -> None:
    async with serve_emulator(auto_ready=True) as emulator, \
            aiohttp.ClientSession(headers={"User-Agent": FIXTURE_AGENT}) as session:
        crd = yaml.safe_load((ROOT / "crds" / "llmservice.yaml").read_text())
        async with session.post(f"{emulator.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                json=crd) as response:
            response.raise_for_status()
        write_kubeconfig(emulator.url, kubeconfig)
        loop = asyncio.get_running_loop()

        def answer() -> None:
            while True:
                queries.recv()
                queries.send(asyncio.run_coroutine_threadsafe(_calls(emulator), loop).result())

        threading.Thread(target=answer, daemon=True).start()
        pipe.send(emulator.url)
        await asyncio.Event().wait()


async def _calls(emulator: Any) -> dict[tuple[str, str], int]:
    return dict(emulator.calls)


def api_calls(queries: Connection) -> int:
    """The operator's calls the emulator counted so far, watches left out."""
    queries.send("calls")
    return sum(count for (verb, _), count in queries.recv().items() if verb != "watch")


def rss_bytes() -> int:
    """This process's resident memory."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_traffic(services: int, pipe: Connection) -> None:
    """Play RATE req/s of chat traffic per service model and serve the metrics (vLLM's and the
    router's) until killed; sends the scrape target once up."""
    registry = CollectorRegistry()
    metrics = VllmMetrics(registry, router=True)
    port = free_port()
    start_http_server(port, addr="127.0.0.1", registry=registry)
    for k in range(services):
        Stream(metrics, model_name(k), RATE, CHAT, seed=k, poisson=False).start()
    pipe.send(f"127.0.0.1:{port}")
    threading.Event().wait()


def wait_for_traffic(prometheus_url: str, services: int, timeout_s: float = 120.0) -> None:
    """Until Prometheus holds twice the services' minRequests for every model over the last minute (a
    first pass on fewer is refused as "too few requests", and the next waits for the interval)."""
    counter = f'{{__name__=~"{vllm_name_regex(VLLM_REQUEST_SUCCESS)}"}}'
    query = f"count(sum by ({MODEL_LABEL}) (increase({counter}[1m])) > {2 * MIN_REQUESTS})"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = requests.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=5).json()
        if result["data"]["result"] and float(result["data"]["result"][0]["value"][1]) >= services:
            return
        time.sleep(1.0)
    raise TimeoutError(f"Prometheus did not see {MIN_REQUESTS} requests of each of {services} models in {timeout_s:g} s")


# ----- timing the operator's own calls -----

@dataclass
class Cycle:
    service: str
    started: float
    ended: float
    wall: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    cpu: dict[str, float] = field(default_factory=dict)  # phase -> thread CPU seconds

    @property
    def seconds(self) -> float:
        return self.ended - self.started


CURRENT: contextvars.ContextVar[Cycle | None] = contextvars.ContextVar("bench_cycle", default=None)


def timed(phase: str, function: Callable) -> Callable:
    """`function` (run in a worker thread by the handler), adding its wall and CPU time to the cycle's phase."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            cycle = CURRENT.get()
            if cycle is not None:
                cycle.wall[phase] = cycle.wall.get(phase, 0.0) + time.perf_counter() - wall
                cycle.cpu[phase] = cycle.cpu.get(phase, 0.0) + time.thread_time() - cpu
    return wrapper


class TimedCluster(Cluster):
    """The operator's Cluster, its reads and apply timed."""

    def __init__(self, api: Any) -> None:
        super().__init__(api)
        self.read_config_data = timed("cluster reads", super().read_config_data)
        self.owned_objects = timed("cluster reads", super().owned_objects)
        self.apply = timed("apply", super().apply)


def instrument(cycles: list[Cycle]) -> None:
    """Wrap the (freshly reloaded) handlers module's calls; every pass is appended to `cycles`."""
    original = handlers.reconcile_service

    async def reconcile_service(body: kopf.Body, *args: Any, **kwargs: Any) -> Any:
        cycle = Cycle(body["metadata"]["name"], time.perf_counter(), 0.0)
        token = CURRENT.set(cycle)
        try:
            return await original(body, *args, **kwargs)
        finally:
            cycle.ended = time.perf_counter()
            CURRENT.reset(token)
            cycles.append(cycle)

    handlers.reconcile_service = reconcile_service
    handlers.read_live = timed("metrics query", handlers.read_live)
    handlers.reconcile = timed("solve + plan", handlers.reconcile)


# ----- one row: N services -----

def manifest(k: int, namespace: str, interval_s: int, static: bool = False) -> dict:
    """Service k: the example's own static workload at RATE req/s (`static`), else Prometheus."""
    service = copy.deepcopy(EXAMPLES[k % 2])
    service["metadata"] = {"name": f"svc-{k:03d}", "namespace": namespace}
    spec = service["spec"]
    spec["model"] = model_name(k)
    if static:
        spec["workload"]["static"]["rate"] = RATE
    else:
        spec["workload"] = {"source": "prometheus", "prometheus": {"window": "5m", "minRequests": MIN_REQUESTS},
                            "grid": spec["workload"]["grid"]}
    spec["reallocation"] = {**spec.get("reallocation", {}), "interval": f"{interval_s}s"}
    return service


def unsettled(service: dict) -> str:
    """Why a service is not settled (for the timeout message)."""
    status = service.get("status") or {}
    conditions = [f"{c['type']}={c['status']} ({c.get('message', '')[:80]})" for c in status.get("conditions", [])
                  if c["type"] in ("Solved", "Ready", "MetricsAvailable") and c["status"] != "True"]
    return "; ".join(conditions + (["moving"] if status.get("move") else []))


def settled(service: dict) -> bool:
    conditions = {c["type"]: c["status"] for c in (service.get("status") or {}).get("conditions", [])}
    static = service["spec"]["workload"]["source"] == "static"
    return conditions.get("Solved") == "True" and conditions.get("Ready") == "True" \
        and (static or conditions.get("MetricsAvailable") == "True") and not service["status"].get("move")


@dataclass
class Row:
    services: int
    interval_s: int
    window_s: float
    cpu_s: float
    cycles: list[Cycle]
    solves: int
    moves: int  # moves started in the window
    side_cpu_s: dict[str, float]  # CPU seconds of the other processes in the window
    calls: int = 0  # the operator's API calls in the window (watches left out)
    rss_growth: int = 0  # bytes of resident memory from before the services to the window's end
    memo: tuple[int, int] = (0, 0)  # solves answered from the memo, solves run, in the window
    started: float = 0.0
    ended: float = 0.0


async def measure(url: str, prometheus_url: str | None, services: int, interval_s: int, window_s: float,
                  others: dict[str, int], say: Callable[[str], None], queries: Connection,
                  memo: bool = True, clean_up: bool = True) -> Row:
    """Start an operator on a fresh namespace, create the services, wait until all are settled, then
    record the cycles and this process's CPU over `window_s`."""
    namespace = f"scale-{services}"
    async with aiohttp.ClientSession(headers={"User-Agent": FIXTURE_AGENT}) as session:
        async with session.post(f"{url}/api/v1/namespaces",
                                json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}) as r:
            r.raise_for_status()
        config = OperatorConfig(prometheus=PrometheusDefaults(url=prometheus_url), cluster=TimedCluster(load_config()),
                                drain_s=DRAIN_S)
        if not memo:
            config.solve_memo = None  # every solve runs, as for live traffic whose reading changes each interval
        operator = await start_operator(handlers, namespaces=[namespace], memo=kopf.Memo(config=config))
        gc.collect()
        rss_before = rss_bytes()  # the operator started, no service yet
        cycles: list[Cycle] = []
        instrument(cycles)
        try:
            for k in range(services):  # created together: their first passes fall due together
                async with session.post(url + LLMSERVICES.format(namespace=namespace),
                                        json=manifest(k, namespace, interval_s, prometheus_url is None)) as r:
                    r.raise_for_status()
            created, seen = time.monotonic(), set()
            deadline = created + max(300, services * 1.2)
            while True:  # until each service has been solved, ready and not moving at least once
                async with session.get(url + LLMSERVICES.format(namespace=namespace)) as r:
                    items = (await r.json())["items"]
                seen |= {i["metadata"]["name"] for i in items if settled(i)}
                if len(seen) == services:
                    break
                if time.monotonic() > deadline:
                    waiting = [(i["metadata"]["name"], unsettled(i)) for i in items if i["metadata"]["name"] not in seen]
                    raise TimeoutError(f"only {len(seen)} of {services} services settled in "
                                       f"{deadline - created:.0f} s, e.g. {waiting[:3]}")
                await asyncio.sleep(1.0 if services < 100 else 5.0)  # each poll lists every service
            settle_s = time.monotonic() - created
            say(f"{services} services: settled in {settle_s:.0f} s, measuring {window_s:.0f} s")
            first, count_before = len(cycles), _count(config.metrics.solve_seconds)
            moves_before = _moves(config.metrics)
            side = {name: cpu_seconds(pid) for name, pid in others.items()}
            memo = config.solve_memo or SolveMemo()
            memo_before = (memo.hits, memo.misses)
            calls_before = await asyncio.to_thread(api_calls, queries)
            cpu, started = time.process_time(), time.perf_counter()
            await asyncio.sleep(window_s)
            cpu_s, ended = time.process_time() - cpu, time.perf_counter()
            calls = await asyncio.to_thread(api_calls, queries) - calls_before
            side = {name: cpu_seconds(pid) - side[name] for name, pid in others.items()}
            memo_used = (memo.hits - memo_before[0], memo.misses - memo_before[1])
            rss_growth = rss_bytes() - rss_before
            solves = _count(config.metrics.solve_seconds) - count_before
            moves = _moves(config.metrics) - moves_before
            window = [c for c in cycles[first:] if started <= c.ended <= ended]
        finally:
            await operator.stop()
        if clean_up:  # not after the last row: the emulator goes with the bench (deleting 1,000 services takes it minutes)
            try:
                async with session.delete(f"{url}/api/v1/namespaces/{namespace}",
                                          timeout=aiohttp.ClientTimeout(total=600)) as r:
                    r.raise_for_status()
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                say(f"{services} services: deleting namespace {namespace} failed ({error!r}); measured all the same")
    return Row(services, interval_s, window_s, cpu_s, window, solves, moves, side, calls, rss_growth, memo_used,
               started, ended)


def _moves(metrics: Any) -> int:
    """Moves started so far (decisions to scale up or rebalance)."""
    return int(sum(s.value for m in metrics.decisions.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels["kind"] in ("scale-up", "rebalance")))


def _count(histogram: Any) -> int:
    """Observations in a prometheus_client Histogram (its `_count` sample)."""
    return int(next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count")))


# ----- the report -----

def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def max_gap_s(row: Row) -> float | None:
    """The longest time a service of the row went without a pass in the window: between two of its
    passes, or from the window's start to its first or from its last to the window's end."""
    ends: dict[str, list[float]] = {}
    for cycle in row.cycles:
        ends.setdefault(cycle.service, []).append(cycle.ended)
    if len(ends) < row.services:
        return math.inf  # some service had no pass at all in the window
    gaps = [b - a for times in ends.values()
            for a, b in zip([row.started] + sorted(times), sorted(times) + [row.ended])]
    return max(gaps) if gaps else None


def peak_in_flight(cycles: list[Cycle]) -> int:
    """The most passes running at once, waiting for a slot included."""
    edges = sorted([(c.started, 1) for c in cycles] + [(c.ended, -1) for c in cycles])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def phase_row(label: str, cycles: list[Cycle], cpu_per_cycle: float | None, row: Row) -> list[str]:
    """Mean wall / mean thread CPU per phase (ms) of `cycles`; the rest of the wall time and of the
    process CPU is "other"; the other processes' CPU per cycle when `cpu_per_cycle` is given."""
    wall = [sum(c.wall.get(p, 0.0) for c in cycles) / len(cycles) * 1000 for p in PHASES]
    cpu = [sum(c.cpu.get(p, 0.0) for c in cycles) / len(cycles) * 1000 for p in PHASES]
    other_wall = statistics.mean([c.seconds for c in cycles]) * 1000 - sum(wall)
    other_cpu = "-" if cpu_per_cycle is None else f"{cpu_per_cycle * 1000 - sum(cpu):.0f}"
    sides = [f"{row.side_cpu_s[name] / len(row.cycles) * 1000:.0f}" if cpu_per_cycle is not None
             and name in row.side_cpu_s else "-" for name in SIDES]
    return [label] + [f"{w:.0f} / {c:.0f}" for w, c in zip(wall, cpu)] + [f"{other_wall:.0f} / {other_cpu}"] + sides


def report(rows: list[Row]) -> None:
    goal_rows, phase_rows = [], []
    for row in rows:
        seconds = [c.seconds for c in row.cycles]
        per_cycle = row.cpu_s / len(row.cycles)
        per_service_interval = row.cpu_s / row.services * row.interval_s / row.window_s
        gap = max_gap_s(row)
        p50, p90 = statistics.median(seconds), percentile(seconds, 0.9)
        if row.services == 100:
            goal = "yes" if p50 <= 0.5 and p90 <= 1.0 and gap <= row.interval_s + TICK_S + max(seconds) else "no"
        elif row.services >= 1000:
            goal = "yes" if row.cpu_s / row.window_s <= 1.0 and gap <= row.interval_s + TICK_S + max(seconds) else "no"
        else:
            goal = "-"
        hits, runs = row.memo
        goal_rows.append([row.services, f"{row.interval_s} s", len(row.cycles), row.moves,
                          f"{p50 * 1000:.0f}", f"{p90 * 1000:.0f}", f"{max(seconds) * 1000:.0f}",
                          f"{per_cycle * 1000:.0f}", f"{per_service_interval * 1000:.0f}",
                          f"{100 * row.cpu_s / row.window_s:.0f}%", f"{row.rss_growth / row.services / 2 ** 20:.2f}",
                          f"{row.calls / len(row.cycles):.1f}",
                          f"{100 * hits / (hits + runs):.0f}%" if hits + runs else "-",
                          peak_in_flight(row.cycles), "-" if gap is None else f"{gap:.0f}", goal])
        phase_rows.append(phase_row(str(row.services), row.cycles, per_cycle, row))
        slowest = sorted(row.cycles, key=lambda c: c.seconds)[int(0.9 * len(row.cycles)):]
        if row.services > 1:
            phase_rows.append(phase_row(f"{row.services}, slowest 10%", slowest, None, row))
    print_table(["services", "interval", "passes", "moves", "p50 ms", "p90 ms", "max ms", "CPU ms/pass",
                 "CPU ms/service/interval", "core use", "MiB/service", "API calls/pass", "solves remembered",
                 "peak in flight", "max gap s", "goal"], goal_rows)
    print()
    print("Per pass, mean wall ms / mean CPU ms (\"other\": the pass's remaining wall time, waiting included; CPU "
          "of kopf, watches, the services' daemons, Events):")
    print_table(["services", *PHASES, "other", *(f"{name} CPU ms" for name in SIDES)], phase_rows)
    print()
    print("goal: 100 services, p50 <= 500 ms, p90 <= 1000 ms, every service a pass every interval; 1,000 "
          "services, every service a pass every interval within one core (core use <= 100%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--services", default="1,10,100,1000", help="service counts, comma-separated")
    parser.add_argument("--window", type=float, default=30.0,
                        help="seconds measured for counts under 100 (interval 5 s)")
    parser.add_argument("--long-window", type=float, default=130.0,
                        help="seconds measured for 100 services and more (interval 60 s: two passes each)")
    parser.add_argument("--static", action="store_true",
                        help="static workloads (the examples' mixes at 4 req/s): no traffic player, no Prometheus, "
                             "no metrics query (for 1,000 services on a machine that cannot also play their traffic)")
    parser.add_argument("--no-memo", action="store_true",
                        help="solve every time (with --static: what live traffic costs, whose reading changes)")
    args = parser.parse_args()
    counts = [int(n) for n in args.services.split(",")]
    # The solver silences file descriptor 1 around each solve; two solves in the operator's worker
    # threads at once can leave it pointing at /dev/null for good. The report goes to a copy made now.
    stdout = os.fdopen(os.dup(1), "w")
    kubeconfig = os.path.join(tempfile.mkdtemp(prefix="melange-bench-"), "kubeconfig")
    receiver, sender = multiprocessing.Pipe(duplex=False)
    queries, answers = multiprocessing.Pipe()
    emulator = multiprocessing.Process(target=run_emulator, args=(kubeconfig, sender, answers), daemon=True)
    traffic = multiprocessing.Process(target=run_traffic, args=(max(counts), sender), daemon=True)
    emulator.start()
    url = receiver.recv()
    os.environ["KUBECONFIG"] = kubeconfig
    prometheus = None
    if not args.static:
        traffic.start()
        prometheus = PrometheusServer([receiver.recv()], scrape_interval_s=SCRAPE_INTERVAL_S)
    rows = []
    try:
        if prometheus is not None:
            prometheus.wait_until_scraping()
            wait_for_traffic(prometheus.url, max(counts))
        for services in counts:
            interval_s, window_s = (60, args.long_window) if services >= 100 else (5, args.window)
            others = {"API emulator": emulator.pid}
            if prometheus is not None:
                others["Prometheus"] = prometheus.process.pid
            rows.append(asyncio.run(measure(url, prometheus.url if prometheus else None, services, interval_s,
                                            window_s, others, lambda line: print(line, file=stdout, flush=True),
                                            queries, memo=not args.no_memo, clean_up=services != counts[-1])))
    finally:
        if prometheus is not None:
            prometheus.stop()
            traffic.terminate()
        emulator.terminate()
    with contextlib.redirect_stdout(stdout):
        report(rows)
    stdout.flush()


if __name__ == "__main__":
    main()
