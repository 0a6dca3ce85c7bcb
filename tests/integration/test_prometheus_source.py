"""The live workload source against a real Prometheus scraping the traffic player."""
from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from melange.solver.buckets import paper_grid
from melange.solver.metrics.prometheus_source import (MIX_INDEPENDENT, MIX_ROUTER, MetricsError, PrometheusConfig,
                                              PrometheusSource)
from melange.solver.metrics.metric_names import VLLM_REQUEST_SUCCESS, vllm_name_regex
from melange.solver.metrics.traffic_player import CHAT, DOCUMENTS, Shape, SizeMix, Stream, VllmMetrics

from melange.testing.prometheus_server import PrometheusServer
from melange.testing.ports import free_port

pytestmark = pytest.mark.integration

WINDOW_S = 12.0
# Rates are high enough that sampling noise stays well under the TV bound: with n requests in the
# window the empirical mix is about 1/sqrt(n) away from the truth in total variation.
GRID = paper_grid()
# Independent input/output lengths whose ranges end on vLLM's 1-2-5 bucket edges: the marginal path
# assumes sizes uniform inside a vLLM bucket, and cannot see a range ending mid-bucket (that error is
# measured in tests/solver/metrics/test_histograms.py).
PRODUCT_MIX = SizeMix((Shape(1.0, (21, 2000), (11, 500)),))
ODD_NAME = 'we"ird\\model} or vector(1)'


def total_variation(a, b) -> float:
    return 0.5 * sum(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


class Exporter:
    def __init__(self, router: bool) -> None:
        self.registry = CollectorRegistry()
        self.metrics = VllmMetrics(self.registry, router=router)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def traffic():
    """Three exporters: router-joint traffic (chat, a mix that shifts to documents, an odd model
    name), vLLM-only traffic (an independent mix), and one that goes away (stale)."""
    joint, marginal, leaving = Exporter(router=True), Exporter(router=False), Exporter(router=False)
    streams = {
        "chat": Stream(joint.metrics, "chat", 200.0, CHAT, seed=1, poisson=False),
        "shift": Stream(joint.metrics, "shift", 150.0, CHAT, seed=2, poisson=False),
        ODD_NAME: Stream(joint.metrics, ODD_NAME, 100.0, DOCUMENTS, seed=3, poisson=False),
        "independent": Stream(marginal.metrics, "independent", 150.0, PRODUCT_MIX, seed=4, poisson=False),
        "leaving": Stream(leaving.metrics, "leaving", 10.0, CHAT, seed=5, poisson=False),
    }
    prometheus = PrometheusServer([joint.target, marginal.target, leaving.target])
    try:
        prometheus.wait_until_scraping()
        for stream in streams.values():
            stream.start()
        yield prometheus, streams, leaving
    finally:
        for stream in streams.values():
            stream.stop()
        prometheus.stop()
        for exporter in (joint, marginal, leaving):
            try:
                exporter.close()
            except OSError:
                pass


def source(prometheus, model, **overrides) -> PrometheusSource:
    settings = {"window_s": WINDOW_S, "min_requests": 100, **overrides}
    config = PrometheusConfig(url=prometheus.url, selector={"model_name": model}, **settings)
    return PrometheusSource(config)


def wait_for_window(start: float) -> None:
    remaining = start + WINDOW_S + 3 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def test_rate_mix_shift_staleness_and_escaping(traffic):
    prometheus, streams, leaving = traffic
    started = time.monotonic()
    wait_for_window(started)

    chat = source(prometheus, "chat").workload(GRID)
    assert chat.status == "ok" and chat.mix_source == MIX_ROUTER
    assert chat.rate == pytest.approx(200.0, rel=0.05)
    assert total_variation(chat.workload.distribution, CHAT.distribution(GRID)) <= 0.05

    independent = source(prometheus, "independent").workload(GRID)
    assert independent.status == "ok" and independent.mix_source == MIX_INDEPENDENT
    assert any("independent" in note for note in independent.notes)
    assert independent.rate == pytest.approx(150.0, rel=0.05)
    assert total_variation(independent.workload.distribution, PRODUCT_MIX.distribution(GRID)) <= 0.05

    odd = source(prometheus, ODD_NAME).workload(GRID)  # the label value is matched exactly, not injected
    assert odd.status == "ok" and odd.rate == pytest.approx(100.0, rel=0.05)
    assert total_variation(odd.workload.distribution, DOCUMENTS.distribution(GRID)) <= 0.05

    injected = source(prometheus, 'chat"} or vector(1) #').workload(GRID)
    assert injected.status == "no_series" and injected.workload is None

    # The mix shifts from chat to documents; one window later the estimate follows it.
    streams["shift"].set_mix(DOCUMENTS)
    leaving.close()
    shifted_at = time.monotonic()
    wait_for_window(shifted_at)
    shift = source(prometheus, "shift").workload(GRID)
    assert shift.status == "ok" and shift.rate == pytest.approx(150.0, rel=0.05)
    assert total_variation(shift.workload.distribution, DOCUMENTS.distribution(GRID)) <= 0.05

    gone = source(prometheus, "leaving").workload(GRID)
    assert gone.status in ("stale", "no_series") and not gone.trustworthy


def test_no_series_is_not_a_zero_to_scale_down_on(traffic):
    prometheus, _, _ = traffic
    result = source(prometheus, "nobody-serves-this").workload(GRID)
    assert result.status == "no_series" and result.workload is None and not result.trustworthy


def test_too_few_requests_is_flagged(traffic):
    prometheus, _, _ = traffic
    wait_for_samples(prometheus, "chat", 3)
    result = source(prometheus, "chat", min_requests=10**9).workload(GRID)
    assert result.status == "too_few_requests" and result.workload is not None
    assert any("not trustworthy" in note for note in result.notes)


def wait_for_samples(prometheus, model: str, samples: int, timeout_s: float = 60.0) -> None:
    """Block until Prometheus holds `samples` scrapes of the model's request counter."""
    probe = source(prometheus, model)
    name = vllm_name_regex(VLLM_REQUEST_SUCCESS)
    query = f'count_over_time({{__name__=~"{name}",model_name="{model}"}}[10m])'
    deadline = time.monotonic() + timeout_s
    while not (probe.query(query) and float(probe.query(query)[0]["value"][1]) >= samples):
        assert time.monotonic() < deadline, f"Prometheus did not scrape {samples} samples of {model}"
        time.sleep(0.2)


def test_a_series_younger_than_the_window_is_measured_over_its_span(traffic):
    """A service that started 8 scrapes ago, asked about the last 5 minutes: its 120 req/s must not
    come out as 120 x 8 / 300 = 3 req/s (what rate() over the whole window gives)."""
    prometheus, streams, _ = traffic
    young = Stream(streams["chat"].metrics, "young", 120.0, CHAT, seed=11, poisson=False)
    young.start()
    try:
        wait_for_samples(prometheus, "young", 8)
        result = source(prometheus, "young", window_s=300.0, min_requests=10).workload(GRID)
    finally:
        young.stop()
    assert result.status == "ok"
    assert result.rate == pytest.approx(120.0, rel=0.05)
    assert result.span_s is not None and 5 < result.span_s < 60
    assert any(f"cover only the last {result.span_s:.0f} s of the 300 s window" in note for note in result.notes)
    assert total_variation(result.workload.distribution, CHAT.distribution(GRID)) <= 0.05


def test_prometheus_down_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MetricsError, match=url.replace(".", r"\.")):
        PrometheusSource(PrometheusConfig(url=url, retries=1, backoff_s=0.01, timeout_s=1)).workload(GRID)


def test_counter_reset_keeps_the_rate():
    """The exporter restarts (counters back to 0) inside the window; rate() spans the reset."""
    port = free_port()
    registry = CollectorRegistry()
    metrics = VllmMetrics(registry, router=True)
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    prometheus = PrometheusServer([f"127.0.0.1:{port}"])
    stream = Stream(metrics, "reset", 250.0, CHAT, seed=9, poisson=False)
    try:
        prometheus.wait_until_scraping()
        stream.start()
        time.sleep(WINDOW_S / 2)
        stream.stop()
        server.shutdown()
        server.server_close()
        registry = CollectorRegistry()
        metrics = VllmMetrics(registry, router=True)
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
        stream = Stream(metrics, "reset", 250.0, CHAT, seed=10, poisson=False)
        stream.start()
        time.sleep(WINDOW_S / 2 + 4)
        result = source(prometheus, "reset").workload(GRID)
        assert result.status == "ok"
        assert result.rate == pytest.approx(250.0, rel=0.1)
        assert total_variation(result.workload.distribution, CHAT.distribution(GRID)) <= 0.05
    finally:
        stream.stop()
        prometheus.stop()
        server.shutdown()
        server.server_close()


def test_cli_solves_on_live_traffic(traffic, capsys):
    import json

    from melange.solver.cli.main import main

    from ..conftest import EXAMPLES
    prometheus, _, _ = traffic
    wait_for_samples(prometheus, "chat", 2)
    code = main(["solve", str(EXAMPLES / "arena-llama2-7b" / "bundle.yaml"), "--prometheus", prometheus.url,
                 "--model-name", "chat", "--window", f"{int(WINDOW_S)}s", "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(out)
    assert document["rate"] == pytest.approx(200.0, rel=0.05)
    assert any("live workload" in note for note in document["notes"])
    assert document["status"] == "optimal"

    code = main(["solve", str(EXAMPLES / "arena-llama2-7b" / "bundle.yaml"), "--prometheus", prometheus.url,
                 "--model-name", "nobody", "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 3 and out == "" and "no_series" in err
