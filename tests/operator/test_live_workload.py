"""Reading a Prometheus answer for the operator: unknown is never idle; zero on current series is idle."""
from __future__ import annotations

from dataclasses import replace

from melange.operator.live_workload import PrometheusDefaults, interpret, prometheus_config, read_live
from melange.operator.core.spec import parse_spec
from melange.solver.buckets import BucketGrid
from melange.solver.metrics.prometheus_source import LiveWorkload
from melange.solver.workload import make_workload
from melange.testing.ports import free_port

GRID = BucketGrid((100, 1000), (100,))
WORKLOAD = make_workload(3.0, GRID, [[0.5], [0.5]], "w")


def spec(prometheus: dict | None = None):
    return parse_spec({"model": "org/model-7b", "catalogModel": "llama-3-8b", "slo": {"tpotMs": 100},
                       "gpuOptions": [{"name": "l4", "gpu": "l4"}],
                       "workload": {"source": "prometheus", **({"prometheus": prometheus} if prometheus else {})}})


def test_the_spec_selects_the_served_model_and_narrows_it():
    config = prometheus_config(spec({"url": "http://prom:9090", "selector": {"namespace": "llm"}, "window": "5m",
                                     "minRequests": 20}), PrometheusDefaults(), None, None)
    assert config.url == "http://prom:9090" and config.window_s == 300
    assert config.selector == {"model_name": "org/model-7b", "namespace": "llm"} and config.min_requests == 20


def test_the_operators_default_prometheus_and_token():
    config = prometheus_config(spec(), PrometheusDefaults("http://default:9090", "tok", "/ca.pem"), None, None)
    assert (config.url, config.bearer_token, config.ca_bundle) == ("http://default:9090", "tok", "/ca.pem")
    assert prometheus_config(spec(), PrometheusDefaults(), None, None) is None
    assert "--prometheus-url" in read_live(None, GRID, "10m").reason


def test_a_trustworthy_answer_is_the_workload():
    live = interpret(LiveWorkload("ok", 3.0, 1800, 600, "router", WORKLOAD), GRID, "10m")
    assert live.workload is WORKLOAD and "1800 requests in 10m" in live.reason
    assert live.requests == 1800  # the count the rate's noise is judged by


def test_zero_requests_on_current_series_is_idle():
    live = interpret(LiveWorkload("ok", 0.0, 0.0, 600, None, None, ("every request lies beyond the grid",)), GRID, "10m")
    assert live.workload is not None and live.workload.rate == 0 and "idle" in live.reason and live.requests == 0


def test_unknown_is_never_idle():
    for status in ("no_series", "stale"):
        live = interpret(LiveWorkload(status, 0.0, 0.0, 600, None, None, ("why",)), GRID, "10m")
        assert live.workload is None and status.replace("_", " ") in live.reason
    few = interpret(LiveWorkload("too_few_requests", 0.1, 12, 600, "router", WORKLOAD, ("only 12",)), GRID, "10m")
    assert few.workload is None and "too few requests" in few.reason
    assert not few.mix_trusted
    # a trustworthy answer's mix is one a later thin window may use; an unknown one is not
    assert interpret(LiveWorkload("ok", 3.0, 1800, 600, "router", WORKLOAD), GRID, "10m").mix_trusted
    for status in ("no_series", "stale"):
        assert interpret(LiveWorkload(status, 0.0, 0.0, 600, None, None, ("why",)), GRID, "10m", WORKLOAD).workload is None


def test_too_few_requests_count_the_rate_with_the_last_trusted_mix():
    """A window with fewer than minRequests requests (a service winding down, a trickle): its rate with
    the size mix of the last window that had enough; its count stays, so the bounds are as wide as 12
    requests make them."""
    thin_mix = make_workload(0.1, GRID, [[0.0], [1.0]], "thin")  # 12 requests, all in the second bucket
    few = interpret(LiveWorkload("too_few_requests", 0.1, 12, 600, "router", thin_mix, ("only 12",)), GRID, "10m",
                    trusted=WORKLOAD)
    assert few.workload.rate == 0.1 and few.workload.distribution == ((0.5,), (0.5,))  # the trusted 50/50
    assert few.requests == 12 and not few.mix_trusted
    assert "12.0 requests in 10m" in few.reason and "last window that had enough" in few.reason
    # a mix on another grid (the spec's grid changed since) is no stand-in
    other = make_workload(3.0, BucketGrid((100, 1000, 5000), (100,)), [[0.2], [0.3], [0.5]], "w")
    assert interpret(LiveWorkload("too_few_requests", 0.1, 12, 600, "router", thin_mix, ("only 12",)), GRID, "10m",
                     trusted=other).workload is None


def test_prometheus_down_is_no_workload_and_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    config = prometheus_config(spec({"url": url}), PrometheusDefaults(), None, None)
    live = read_live(replace(config, retries=0, timeout_s=0.5), GRID, "10m")
    assert live.workload is None and url in live.reason


def test_only_pools_with_series_are_read_and_a_service_without_them_costs_one_query(monkeypatch):
    """Per-pool windows for the capacity corrections: one `count by (melange_ai_option)` query finds
    the pools with series; only those are read, and a pool that fails is left out."""
    from melange.operator import live_workload
    from melange.solver.errors import UnavailableError
    from melange.solver.metrics.prometheus_source import MetricsError, PrometheusSource
    from melange.solver.profiles import Slo
    queries: list[str] = []
    pools_answer: list[dict] = []
    monkeypatch.setattr(PrometheusSource, "workload",
                        lambda self, grid: LiveWorkload("ok", 3.0, 1800, 600, "router", WORKLOAD))
    monkeypatch.setattr(PrometheusSource, "query", lambda self, promql: queries.append(promql) or pools_answer)
    read: list[str] = []

    def fake_read_pool(config, option, grid, slo, now):
        read.append(option)
        if option == "h100":
            raise MetricsError("down")
        return option

    monkeypatch.setattr(live_workload, "read_pool", fake_read_pool)
    config = prometheus_config(spec({"url": "http://prom:9090"}), PrometheusDefaults(), None, None)
    live = read_live(config, GRID, "10m", ["l4", "a10g", "h100"], Slo(tpot_ms=100.0))
    assert live.workload is WORKLOAD and live.pools == {} and read == []
    assert len(queries) == 1 and queries[0].startswith("count by (melange_ai_option) (")
    pools_answer.extend([{"metric": {"melange_ai_option": "l4"}, "value": [0, "2"]},
                         {"metric": {"melange_ai_option": "h100"}, "value": [0, "1"]}])
    live = read_live(config, GRID, "10m", ["l4", "a10g", "h100"], Slo(tpot_ms=100.0))
    assert read == ["l4", "h100"] and live.pools == {"l4": "l4"} and issubclass(MetricsError, UnavailableError)
