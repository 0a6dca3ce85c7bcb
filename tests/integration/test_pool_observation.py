"""Per-pool observations for capacity corrections, against a real Prometheus scraping two vLLM-like pool
exporters (the traffic player's metrics with `melange_ai_option` and latency): the queries return the
rate, size mix, latency statistic and waiting queue each exporter was told."""
from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from melange.operator.live_workload import read_live, read_pool
from melange.solver.buckets import paper_grid
from melange.solver.metrics.prometheus_source import PrometheusConfig
from melange.solver.metrics.traffic_player import Shape, SizeMix, Stream, VllmMetrics
from melange.solver.profiles import Slo
from melange.testing.ports import free_port
from melange.testing.prometheus_server import PrometheusServer

pytestmark = pytest.mark.integration

WINDOW_S = 12.0
GRID = paper_grid()
MODEL = "svc"
# Independent input and output lengths whose ranges end on vLLM's 1-2-5 edges (the per-pool mix comes
# from vLLM's marginals, read as independent).
A10G_MIX = SizeMix((Shape(1.0, (21, 2000), (11, 500)),))
L4_MIX = SizeMix((Shape(1.0, (201, 5000), (51, 200)),))


def total_variation(a, b) -> float:
    return 0.5 * sum(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


class PoolExporter:
    def __init__(self, pool: str) -> None:
        self.registry = CollectorRegistry()
        self.metrics = VllmMetrics(self.registry, pool=pool)
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pools():
    """a10g: 100 req/s, TPOT uniform on [100, 140] ms (mean 120), TTFT uniform on [200, 600] ms (mean
    400), 3 requests waiting. l4: 40 req/s, TPOT 50 ms, TTFT 1.5 s, none waiting."""
    a10g, l4 = PoolExporter("a10g"), PoolExporter("l4")
    a10g.metrics.set_waiting(MODEL, 3)
    l4.metrics.set_waiting(MODEL, 0)
    streams = [Stream(a10g.metrics, MODEL, 100.0, A10G_MIX, seed=1, poisson=False,
                      latency=lambda rng: (rng.uniform(0.100, 0.140), rng.uniform(0.2, 0.6))),
               Stream(l4.metrics, MODEL, 40.0, L4_MIX, seed=2, poisson=False, latency=lambda rng: (0.05, 1.5))]
    prometheus = PrometheusServer([a10g.target, l4.target])
    try:
        prometheus.wait_until_scraping()
        for stream in streams:
            stream.start()
        time.sleep(WINDOW_S + 3)
        yield prometheus
    finally:
        for stream in streams:
            stream.stop()
        prometheus.stop()
        for exporter in (a10g, l4):
            exporter.close()


def config(prometheus) -> PrometheusConfig:
    return PrometheusConfig(url=prometheus.url, selector={"model_name": MODEL}, window_s=WINDOW_S, min_requests=10)


def test_each_pool_reads_what_its_exporter_was_told(pools):
    now = time.time()
    a10g = read_pool(config(pools), "a10g", GRID, Slo(tpot_ms=120.0, ttft_ms=1000.0), now)
    l4 = read_pool(config(pools), "l4", GRID, Slo(tpot_ms=120.0, ttft_ms=1000.0), now)
    assert a10g is not None and l4 is not None
    assert a10g.rate == pytest.approx(100.0, rel=0.05) and l4.rate == pytest.approx(40.0, rel=0.05)
    assert a10g.requests == pytest.approx(100.0 * WINDOW_S, rel=0.1)
    assert total_variation(a10g.distribution, A10G_MIX.distribution(GRID)) <= 0.05
    assert total_variation(l4.distribution, L4_MIX.distribution(GRID)) <= 0.05
    # Means from the histograms' _sum / _count: the exporter's means, to the sample's noise (well under 2%).
    assert a10g.tpot_ms == pytest.approx(120.0, rel=0.02) and a10g.ttft_ms == pytest.approx(400.0, rel=0.03)
    assert l4.tpot_ms == pytest.approx(50.0, rel=1e-6) and l4.ttft_ms == pytest.approx(1500.0, rel=1e-6)
    assert a10g.waiting_per_replica == pytest.approx(3.0) and l4.waiting_per_replica == pytest.approx(0.0)
    assert a10g.replicas is None and a10g.end_s == now  # (the operator counts the ready replicas)


def test_a_percentile_slo_reads_histogram_quantile(pools):
    # Every a10g TPOT lies in vLLM's bucket (0.1, 0.15] s; Prometheus interpolates linearly inside a
    # bucket, so p90 reads 0.1 + 0.9 x 0.05 = 0.145 s. The l4's 50 ms lie in (0.025, 0.05]: p90 = 47.5 ms.
    a10g = read_pool(config(pools), "a10g", GRID, Slo(tpot_ms=120.0, percentile=90.0), time.time())
    l4 = read_pool(config(pools), "l4", GRID, Slo(tpot_ms=120.0, percentile=90.0), time.time())
    assert a10g.tpot_ms == pytest.approx(145.0, rel=0.01)
    assert l4.tpot_ms == pytest.approx(47.5, rel=0.01)


def test_the_operator_reads_every_pool_beside_the_workload(pools):
    live = read_live(config(pools), GRID, "12s", ["a10g", "l4", "h100"], Slo(tpot_ms=120.0))
    assert live.workload is not None and live.workload.rate == pytest.approx(140.0, rel=0.05)
    assert set(live.pools) == {"a10g", "l4"}  # h100 has no series: left out, its correction decays
    assert live.pools["l4"].tpot_ms == pytest.approx(50.0, rel=1e-6)
