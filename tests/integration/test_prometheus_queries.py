"""The live workload source's PromQL against a real Prometheus, on traffic whose every request the test
counts itself: several series per model (two exporters, three finish reasons), bursty Poisson
arrivals, and a quiet spell before the query. The expected rate and mix come from that count, not
from the code under test: summing one series instead of all, or reading the last instant's rate
(`irate`) instead of the window's, gives a different answer here."""
from __future__ import annotations

import bisect
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
import requests
from prometheus_client import CollectorRegistry, start_http_server

from melange.solver.buckets import BucketGrid
from melange.solver.metrics.metric_names import ROUTER_SIZE_EDGES
from melange.solver.metrics.prometheus_source import MIX_INDEPENDENT, MIX_ROUTER, PrometheusConfig, PrometheusSource
from melange.solver.metrics.traffic_player import VllmMetrics
from melange.testing.prometheus_server import PrometheusServer

pytestmark = pytest.mark.integration

# Each size range below fills whole vLLM 1-2-5 histogram buckets ((50,100], (500,1000], (1000,2000];
# (10,20], (100,200]) that lie inside one bucket of this grid, so the histogram path loses nothing
# to its uniform-spread assumption and the count per grid bucket is exact on both paths.
GRID = BucketGrid((100, 1000, 2000), (20, 200))
INPUT_RANGES = ((51, 100), (501, 1000), (1001, 2000))
OUTPUT_RANGES = ((11, 20), (101, 200))
REASONS = ("stop", "length", "abort")
# (seconds, arrivals per second): bursts between quiet spells, then silence until the query.
# vLLM's request counter in either spelling (Prometheus negotiates `vllm_` with prometheus_client).
SUCCESS = '{__name__=~"vllm[:_]request_success_total"}'
PHASES = ((1.0, 20.0), (1.0, 250.0), (1.5, 5.0), (1.0, 300.0), (1.0, 10.0))


@dataclass(frozen=True)
class Request:
    at_s: float
    model: str
    exporter: int
    reason: str
    input_tokens: int
    output_tokens: int


def bursty_poisson_requests(seed: int) -> list[Request]:
    """Poisson arrivals whose rate changes phase by phase; each request picks its model, exporter,
    finish reason and sizes at random."""
    rng = random.Random(seed)
    found, start = [], 0.0
    for duration, rate in PHASES:
        at = start + rng.expovariate(rate)
        while at < start + duration:
            found.append(Request(at, rng.choice(("joint", "marginal")), rng.choices((0, 1), (0.7, 0.3))[0],
                                 rng.choices(REASONS, (0.6, 0.3, 0.1))[0],
                                 rng.randint(*rng.choice(INPUT_RANGES)), rng.randint(*rng.choice(OUTPUT_RANGES))))
            at += rng.expovariate(rate)
        start += duration
    return found


def grid_index(edges: tuple[int, ...], tokens: int) -> int:
    """The grid bucket (upper edges, first starting at 0) holding `tokens`."""
    return bisect.bisect_left(edges, tokens)


def router_cell(tokens: int) -> str:
    """The router's `input_le`/`output_le` label for `tokens`."""
    return str(ROUTER_SIZE_EDGES[bisect.bisect_left(ROUTER_SIZE_EDGES, tokens)])


def counted_mix(played: list[Request]) -> list[list[float]]:
    """Share of the played requests per grid bucket, counted one by one."""
    cells = Counter((grid_index(GRID.input_edges, r.input_tokens), grid_index(GRID.output_edges, r.output_tokens))
                    for r in played)
    return [[cells[i, j] / len(played) for j in range(len(GRID.output_edges))] for i in range(len(GRID.input_edges))]


def counted_product_of_marginals(played: list[Request]) -> list[list[float]]:
    """What the histogram path must report: the counted input shares times the counted output shares."""
    inputs = Counter(grid_index(GRID.input_edges, r.input_tokens) for r in played)
    outputs = Counter(grid_index(GRID.output_edges, r.output_tokens) for r in played)
    return [[inputs[i] * outputs[j] / len(played) ** 2 for j in range(len(GRID.output_edges))]
            for i in range(len(GRID.input_edges))]


def total_variation(a, b) -> float:
    return 0.5 * sum(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


class Exporter:
    """One vLLM-like /metrics endpoint on a port the OS picked."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = VllmMetrics(self.registry, router=True)
        self.server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.target = f"127.0.0.1:{self.server.server_port}"

    def create_series(self, request: Request) -> None:
        """Make the series this request will count, at 0, so Prometheus sees each one start from zero."""
        self.metrics.success.labels(request.model, request.reason)
        self.metrics.prompt.labels(request.model)
        self.metrics.generation.labels(request.model)
        if request.model == "joint":
            self.metrics.router.labels(request.model, router_cell(request.input_tokens),
                                       router_cell(request.output_tokens))

    def record(self, request: Request) -> None:
        """Count one finished request as vLLM does; the router's joint counter only for model `joint`."""
        self.metrics.success.labels(request.model, request.reason).inc()
        self.metrics.prompt.labels(request.model).observe(request.input_tokens)
        self.metrics.generation.labels(request.model).observe(request.output_tokens)
        if request.model == "joint":
            self.metrics.router.labels(request.model, router_cell(request.input_tokens),
                                       router_cell(request.output_tokens)).inc()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def instant(prometheus: PrometheusServer, promql: str) -> list[dict]:
    return requests.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=5).json()["data"]["result"]


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def play(requests_: list[Request], exporters: list[Exporter]) -> None:
    """Record each request at its arrival time (real time, as a server would finish them)."""
    stop = threading.Event()
    started = time.monotonic()
    for request in requests_:
        delay = started + request.at_s - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        exporters[request.exporter].record(request)


@pytest.fixture(scope="module")
def played():
    """Plays the traffic once; yields Prometheus, the played requests and the window covering them."""
    exporters = [Exporter(), Exporter()]
    traffic = bursty_poisson_requests(seed=16)
    for request in traffic:
        exporters[request.exporter].create_series(request)
    series = len({(r.exporter, r.model, r.reason) for r in traffic})
    prometheus = PrometheusServer([e.target for e in exporters])
    try:
        opened = time.time()
        prometheus.wait_until_scraping()
        wait_until(lambda: len(instant(prometheus, f"{SUCCESS} == 0")) == series,
                   "every request counter scraped at 0")
        zeros_seen = time.time()
        play(traffic, exporters)
        ended = time.time()
        # Every series has two samples after the last request (the 1 s scrape), so the last instant's
        # rate is 0 while the window's is not.
        wait_until(lambda: (found := instant(prometheus, f"min(timestamp({SUCCESS}))"))
                   and float(found[0]["value"][1]) > ended + 1.5, "two scrapes after the traffic")
        window_s = math.ceil(time.time() - opened) + 2  # from before the first sample to now
        # rate() and increase() extrapolate a series from its last sample to the window's end when that
        # gap is under 1.1 average scrape intervals (Prometheus, promql/functions.go extrapolatedRate),
        # and not before a first sample of 0. Samples span at least from zeros_seen to ended + 1.5 s.
        overshoot = 1 + 1.1 / (ended + 1.5 - zeros_seen)
        yield prometheus, traffic, window_s, overshoot
    finally:
        prometheus.stop()
        for exporter in exporters:
            exporter.close()


def live(prometheus: PrometheusServer, model: str, window_s: float):
    config = PrometheusConfig(url=prometheus.url, selector={"model_name": model}, window_s=window_s, min_requests=10)
    return PrometheusSource(config).workload(GRID)


@pytest.mark.parametrize("model,mix_source", [("joint", MIX_ROUTER), ("marginal", MIX_INDEPENDENT)])
def test_rate_and_count_sum_every_series_over_the_whole_window(played, model, mix_source):
    prometheus, traffic, window_s, overshoot = played
    mine = [r for r in traffic if r.model == model]
    assert len({(r.exporter, r.reason) for r in mine}) == 6  # two exporters x three finish reasons
    result = live(prometheus, model, window_s)
    assert result.status == "ok" and result.mix_source == mix_source
    assert len(mine) <= result.requests_in_window <= len(mine) * overshoot
    # The series are younger than the window (they start with the test), so the source measures over
    # the span their samples cover and reports it; the sent requests over that span is the rate.
    span = result.span_s or window_s
    assert span <= window_s
    assert len(mine) / span * 0.9 <= result.rate <= len(mine) / span * overshoot


def test_router_mix_is_the_counted_mix(played):
    prometheus, traffic, window_s, _ = played
    mine = [r for r in traffic if r.model == "joint"]
    result = live(prometheus, "joint", window_s)
    assert total_variation(result.workload.distribution, counted_mix(mine)) <= 0.02


def test_histogram_mix_is_the_product_of_the_counted_marginals(played):
    prometheus, traffic, window_s, _ = played
    mine = [r for r in traffic if r.model == "marginal"]
    result = live(prometheus, "marginal", window_s)
    assert total_variation(result.workload.distribution, counted_product_of_marginals(mine)) <= 0.02
