from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import replace

import pytest

from melange.solver.buckets import BucketGrid
from melange.solver.errors import InputError
from melange.solver.metrics.prometheus_source import (MIX_INDEPENDENT, MIX_ROUTER, LiveWorkload, MetricsError,
                                                      PrometheusConfig, PrometheusSource, _independent,
                                                      escape_label_value, label_matchers, parse_duration,
                                                      read_bearer_token)
from melange.testing.prometheus_stand_in import HOLD, Failure, Garbled, PrometheusStandIn, sample, series


def test_label_values_cannot_end_the_string():
    assert escape_label_value('a"b\\c\nd\re') == 'a\\"b\\\\c\\nd\\re'
    assert label_matchers({"model_name": 'x"} or vector(1) #'}) == 'model_name="x\\"} or vector(1) #"'


@pytest.mark.parametrize("name", ["bad-name", "1x", "__name__", 'a"'])
def test_bad_label_names_are_refused(name):
    with pytest.raises(InputError) as error:
        label_matchers({name: "v"})
    assert str(error.value) == f"selector.{name}: not a valid label name (allowed: [a-zA-Z_][a-zA-Z0-9_]*, not __name__)"


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("1.5m", 90), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "-5m", "0s", "5 minutes", "1y"])
def test_bad_durations(text):
    with pytest.raises(InputError) as error:
        parse_duration(text)
    assert str(error.value) == (f"window: cannot read duration {text!r} "
                                "(allowed: a positive number with ms, s, m, h or d, e.g. 10m)")


def test_bad_urls_and_windows():
    with pytest.raises(InputError) as error:
        PrometheusSource(PrometheusConfig(url="localhost:9090"))
    assert str(error.value) == "prometheus.url: not an http(s) URL: 'localhost:9090' (allowed: http://host:9090)"
    assert PrometheusSource(PrometheusConfig(url="https://x:9090", window_s=0.5)).config.window_s == 0.5
    for window in (0, -1, float("inf"), float("nan")):
        with pytest.raises(InputError) as error:
            PrometheusSource(PrometheusConfig(url="http://x:9090", window_s=window))
        assert str(error.value) == f"prometheus.window: got {window!r} (allowed: a positive duration)"


def test_label_values_must_be_strings():
    with pytest.raises(InputError) as error:
        label_matchers({"pod": 3})
    assert str(error.value) == "selector.pod: expected a string, got 3"


def test_bearer_token_from_file_and_env(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("secret\n")
    assert read_bearer_token(str(token)) == "secret"
    monkeypatch.setenv("PROM_TOKEN", "other")
    assert read_bearer_token(token_env="PROM_TOKEN") == "other"
    with pytest.raises(InputError) as error:
        read_bearer_token(str(tmp_path / "missing"))
    assert str(error.value) == f"{tmp_path / 'missing'}: cannot read bearer token: No such file or directory"
    token.write_text("\n")
    assert read_bearer_token(str(token)) is None
    monkeypatch.setenv("PROM_TOKEN", " padded\n")
    assert read_bearer_token(token_env="PROM_TOKEN") == "padded"
    monkeypatch.setenv("PROM_TOKEN", "")
    with pytest.raises(InputError) as error:
        read_bearer_token(token_env="PROM_TOKEN")
    assert str(error.value) == "PROM_TOKEN: environment variable is not set or empty"
    assert read_bearer_token() is None


def test_independence_is_the_product_of_marginals():
    matrix, beyond = _independent(([30.0, 10.0], 0.0), ([20.0, 20.0], 0.0))
    assert matrix == [[15.0, 15.0], [5.0, 5.0]] and beyond == 0.0
    # below one request on either axis is still a mix (increase() extrapolates to fractions)
    assert _independent(([0.5, 0.0], 0.0), ([0.25, 0.25], 0.0)) == ([[0.25, 0.25], [0.0, 0.0]], 0.0)


def test_independence_of_an_empty_marginal_is_nothing():
    assert _independent(([3.0, 1.0], 0.0), ([0.0, 0.0], 0.0)) == ([[0.0, 0.0], [0.0, 0.0]], 0.0)
    assert _independent(([0.0, 0.0], 0.0), ([2.0, 2.0], 0.0)) == ([[0.0, 0.0], [0.0, 0.0]], 0.0)


# --- Queries and answers, against an in-process stand-in for Prometheus's HTTP API ---------------
# Expected PromQL is written out by hand; expected values are worked by hand in the comments.

URL_WINDOW = 600.0
SUCCESS = ('{__name__=~"vllm:request_success_total|vllm_request_success_total",'
           'model_name="llama",namespace="prod\\"ns"}')
PROMPT = ('{__name__=~"vllm:request_prompt_tokens_bucket|vllm_request_prompt_tokens_bucket",'
          'model_name="llama",namespace="prod\\"ns"}')
GENERATION = ('{__name__=~"vllm:request_generation_tokens_bucket|vllm_request_generation_tokens_bucket",'
              'model_name="llama",namespace="prod\\"ns"}')
ROUTER = '{__name__=~"melange_router_requests_by_size_total",model_name="llama",namespace="prod\\"ns"}'
RATE = f"sum(rate({SUCCESS}[600s]))"
INCREASE = f"sum(increase({SUCCESS}[600s]))"
NOW = "vector(time())"
RANGE = f"{SUCCESS}[600s]"
LIVE = f"count({SUCCESS})"
JOINT = f"sum by (input_le, output_le) (increase({ROUTER}[600s]))"
PROMPT_BUCKETS = f"sum by (le) (increase({PROMPT}[600s]))"
GENERATION_BUCKETS = f"sum by (le) (increase({GENERATION}[600s]))"
# Input and output axes differ, and the input edge 80 lies inside the router's cell (64, 100].
GRID = BucketGrid((80, 400), (50, 500))
# Series covering the whole window: the first sample 10 s after its start (within 2 scrape intervals).
FULL_RANGE = [series([9410.0 + 15 * k for k in range(40)], pod="a"), series([9415.0 + 15 * k for k in range(39)], pod="b")]


def source(prometheus: PrometheusStandIn, **settings) -> PrometheusSource:
    config = PrometheusConfig(url=prometheus.url, selector={"model_name": "llama", "namespace": 'prod"ns'},
                              window_s=URL_WINDOW, retries=0, backoff_s=0, timeout_s=5)
    return PrometheusSource(replace(config, **settings))


def full_window(rate: float, count: float, live: bool = True) -> dict:
    """Answers for a service whose request counter covers the whole window."""
    return {RATE: [sample(rate)], INCREASE: [sample(count)], NOW: [sample(10000.0, time=10000.0)],
            RANGE: FULL_RANGE, LIVE: [sample(2)] if live else []}


def test_the_router_counter_gives_the_mix_on_a_grid_with_other_edges():
    cells = [
        sample(360, input_le="100", output_le="50"),  # in (64,100]: 16/36 in (0,80], 20/36 in (80,400]
        sample(180, input_le="100", output_le="500"),  # out (256,500] -> bucket 1; split 80 / 100
        sample(240, input_le="256", output_le="500"),  # in (250,256] -> bucket 1
        sample(60, input_le="256.0", output_le="500.0"),  # a second exporter's spelling: the same cell
        sample(56, input_le="2000", output_le="50"),  # in (1024,2000]: beyond the grid
    ]
    with PrometheusStandIn({**full_window(2.5, 1500), JOINT: cells}) as prometheus:
        live = source(prometheus).workload(GRID)
        assert prometheus.queries == [RATE, INCREASE, NOW, RANGE, LIVE, JOINT]
    # matrix [[160, 80], [200, 100 + 300]], 840 placed, 56 beyond (56 / 896 = 6.25%)
    notes = ("size mix from the router's joint (input, output) counter",
             "6.25% of requests lie beyond the grid and are left out")
    assert (live.status, live.rate, live.requests_in_window, live.window_s, live.mix_source, live.notes,
            live.span_s) == ("ok", 2.5, 1500, 600, MIX_ROUTER, notes, None)
    assert live.trustworthy
    assert live.workload.rate == 2.5 and live.workload.grid == GRID and live.workload.notes == notes
    assert live.workload.rate_source == f"measured by Prometheus at {prometheus.url}"
    expected = [[160 / 840, 80 / 840], [200 / 840, 400 / 840]]
    assert [list(row) for row in live.workload.distribution] == [pytest.approx(row) for row in expected]


def test_the_output_axis_decides_the_column():
    # One cell per output bucket, same input: an output axis read on the input edges would move them.
    cells = [sample(30, input_le="50", output_le="50"), sample(10, input_le="50", output_le="256")]
    with PrometheusStandIn({**full_window(1.0, 600), JOINT: cells}) as prometheus:
        live = source(prometheus).workload(BucketGrid((50, 100), (50, 256)))
    assert [list(row) for row in live.workload.distribution] == [[0.75, 0.25], [0.0, 0.0]]


def test_vllm_histograms_give_an_independent_mix_and_too_few_requests_are_flagged():
    prompt = [sample(7), sample(100, le="10"), sample(400, le="50"), sample(400, le="100"), sample(900, le="500"),
              sample(1000, le="+Inf")]  # the first has no `le`: not a bucket, left out
    # Two exporters, one writing "20" and one "20.0": one edge, summed (Prometheus keeps them apart).
    generation = [sample(200, le="20"), sample(400, le="50"), sample(650, le="1000"), sample(100, le="20.0"),
                  sample(200, le="50.0"), sample(330, le="1000.0"), sample(1000, le="+Inf")]
    answers = {**full_window(0.25, 150), PROMPT_BUCKETS: prompt, GENERATION_BUCKETS: generation}
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus).workload(GRID)
        assert prometheus.queries == [RATE, INCREASE, NOW, RANGE, LIVE, JOINT, PROMPT_BUCKETS, GENERATION_BUCKETS]
    # inputs: (0,10] 100 + (10,50] 300 -> 400 in (0,80]; (100,500] 500: 300/400 of its integers in
    # (80,400] -> 375, 125 beyond; +Inf (after 500) 100 beyond. Inputs [400, 375], 225 beyond.
    # outputs: (0,20] 300 + (20,50] 300 -> 600 in (0,50]; (50,1000] 380: 450/950 of its integers in
    # (50,500] -> 180, 200 beyond; +Inf (after 1000) 20 beyond. Outputs [600, 180], 220 beyond.
    # product / 1000 (all outputs): [[240, 72], [225, 67.5]], 604.5 placed, 395.5 beyond (39.55%).
    notes = ("size mix from vLLM's prompt and generation histograms, assuming input and output lengths "
             "are independent", "39.55% of requests lie beyond the grid and are left out",
             "only 150 requests in the window (< 200): the mix is not trustworthy")
    assert (live.status, live.rate, live.requests_in_window, live.mix_source, live.notes) == (
        "too_few_requests", 0.25, 150, MIX_INDEPENDENT, notes)
    assert not live.trustworthy
    expected = [[240 / 604.5, 72 / 604.5], [225 / 604.5, 67.5 / 604.5]]
    assert [list(row) for row in live.workload.distribution] == [pytest.approx(row) for row in expected]


def test_a_router_counter_of_zeros_falls_back_to_the_histograms():
    zeros = [sample(0, input_le="100", output_le="50")]
    prompt, generation = [sample(10, le="50"), sample(10, le="+Inf")], [sample(10, le="50"), sample(10, le="+Inf")]
    answers = {**full_window(1.0, 600), JOINT: zeros, PROMPT_BUCKETS: prompt, GENERATION_BUCKETS: generation}
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus, min_requests=600).workload(GRID)
    assert (live.status, live.mix_source) == ("ok", MIX_INDEPENDENT)
    assert [list(row) for row in live.workload.distribution] == [[1.0, 0.0], [0.0, 0.0]]


def test_histograms_of_zeros_are_no_mix():
    zeros = [sample(0, le="50"), sample(0, le="+Inf")]
    answers = {**full_window(1.0, 600), PROMPT_BUCKETS: zeros, GENERATION_BUCKETS: [sample(5, le="+Inf")]}
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus).workload(GRID)
    assert live == LiveWorkload("no_series", 1.0, 600, 600, None, None, ("no token histograms in the window",))


def test_current_counters_that_did_not_move_are_an_idle_service():
    """Zero requests on live series is idle (rate 0, ok), not unknown: nothing else is asked for."""
    with PrometheusStandIn(full_window(0.0, 0)) as prometheus:
        live = source(prometheus).workload(GRID)
        asked = list(prometheus.queries)
    assert live == LiveWorkload("ok", 0.0, 0.0, 600, None, None, ("no requests in the window: the service is idle",))
    assert JOINT not in asked and PROMPT_BUCKETS not in asked


def test_every_request_beyond_the_grid_is_no_workload():
    cells = [sample(40, input_le="2000", output_le="50")]
    with PrometheusStandIn({**full_window(1.0, 600), JOINT: cells}) as prometheus:
        live = source(prometheus).workload(GRID)
    assert live == LiveWorkload("ok", 1.0, 600, 600, MIX_ROUTER, None,
                                ("size mix from the router's joint (input, output) counter",
                                 "every request lies beyond the grid"))


def test_no_series_is_unknown_not_idle():
    with PrometheusStandIn() as prometheus:
        live = source(prometheus).workload(GRID)
        assert prometheus.queries == [RATE, INCREASE]
    assert live == LiveWorkload("no_series", 0.0, 0.0, 600, None, None,
                                (f"no series match {SUCCESS} at {prometheus.url}",))


def test_a_series_without_a_current_sample_is_stale():
    cells = [sample(100, input_le="50", output_le="50")]
    with PrometheusStandIn({**full_window(0.1, 60, live=False), JOINT: cells}) as prometheus:
        live = source(prometheus).workload(GRID)
        assert not source(prometheus).is_live()
    stale = "the request counter has no current sample: the service or its scrape target is gone"
    # Stale stays stale (not too_few_requests, though 60 < 200).
    assert (live.status, live.rate, live.requests_in_window, live.mix_source) == ("stale", 0.1, 60, MIX_ROUTER)
    assert live.notes == (stale, "size mix from the router's joint (input, output) counter")
    assert live.workload.distribution == ((1.0, 0.0), (0.0, 0.0))
    with PrometheusStandIn(full_window(0.1, 60, live=False)) as prometheus:
        without_mix = source(prometheus).workload(GRID)
    assert without_mix == LiveWorkload("stale", 0.1, 60, 600, None, None, (stale, "no token histograms in the window"))


def test_a_series_younger_than_the_window_is_measured_over_its_span():
    # Now is 10000; the window starts at 9400; the series start at 9700 and 9710 (scraped every 15 s),
    # 300 s after the window's start (> 2 intervals): the rate is measured over 10000 - 9700 s, plus
    # 1 ms so the range holds the first sample: 300001 ms.
    young = [series([9700.0 + 15 * k for k in range(21)], pod="a"), series([9710.0 + 15 * k for k in range(20)], pod="b")]
    span_rate, span_increase = f"sum(rate({SUCCESS}[300001ms]))", f"sum(increase({SUCCESS}[300001ms]))"
    answers = {**full_window(1.5, 900), RANGE: young, span_rate: [sample(3.0)], span_increase: [sample(900)],
               JOINT: [sample(900, input_le="50", output_le="50")]}
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus).workload(GRID)
        assert prometheus.queries == [RATE, INCREASE, NOW, RANGE, span_rate, span_increase, LIVE, JOINT]
    span_note = ("the request counter's series cover only the last 300 s of the 600 s window (a new service or a "
                 "Prometheus restart): the rate is measured over those 300 s")
    assert (live.status, live.rate, live.requests_in_window, live.span_s, live.window_s) == ("ok", 3.0, 900, 300.001, 600)
    assert live.notes == (span_note, "size mix from the router's joint (input, output) counter")
    assert live.workload.rate == 3.0


def test_a_young_series_that_vanishes_has_rate_zero():
    young = [series([9700.0 + 15 * k for k in range(21)])]
    answers = {**full_window(1.5, 900), RANGE: young, JOINT: [sample(900, input_le="50", output_le="50")]}
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus).workload(GRID)
    assert (live.status, live.rate, live.requests_in_window, live.workload) == ("ok", 0.0, 0.0, None)
    assert live.notes[-1] == "no requests in the window: the service is idle" and live.span_s is not None


def test_a_shorter_window_within_one_just_read_shares_its_liveness_and_age():
    """The scale-up window is read right after the window, on the same connection: its rate and mix
    queries only; stale when the window was, measured over the window's span when that is shorter."""
    short_rate, short_increase = f"sum(rate({SUCCESS}[120s]))", f"sum(increase({SUCCESS}[120s]))"
    short_joint = f"sum by (input_le, output_le) (increase({ROUTER}[120s]))"
    answers = {**full_window(2.0, 1200), JOINT: [sample(1200, input_le="50", output_le="50")],
               short_rate: [sample(5.0)], short_increase: [sample(600)],
               short_joint: [sample(300, input_le="50", output_le="50"), sample(300, input_le="256", output_le="50")]}
    with PrometheusStandIn(answers) as prometheus:
        window = source(prometheus)
        read = window.workload(GRID)
        recent = window.over(120.0).workload(GRID, read)
        assert prometheus.queries == [RATE, INCREASE, NOW, RANGE, LIVE, JOINT, short_rate, short_increase, short_joint]
    assert (recent.status, recent.rate, recent.requests_in_window, recent.window_s, recent.span_s) == \
        ("ok", 5.0, 600, 120.0, None)
    assert [list(row) for row in recent.workload.distribution] == [[0.5, 0.0], [0.5, 0.0]]
    stale = LiveWorkload("stale", 0.1, 60, 600, None, None, ())
    with PrometheusStandIn(answers) as prometheus:
        assert source(prometheus).over(120.0).workload(GRID, stale).status == "stale"
    # the window's series are 90 s old: the shorter window is measured over those 90 s too
    young = LiveWorkload("ok", 1.0, 90, 600, None, None, (), span_s=90.0)
    span_rate, span_increase = f"sum(rate({SUCCESS}[90000ms]))", f"sum(increase({SUCCESS}[90000ms]))"
    with PrometheusStandIn({**answers, span_rate: [sample(4.0)], span_increase: [sample(360)]}) as prometheus:
        measured = source(prometheus).over(120.0).workload(GRID, young)
        assert prometheus.queries == [short_rate, short_increase, span_rate, span_increase, short_joint]
    assert (measured.rate, measured.requests_in_window, measured.span_s) == (4.0, 360, 90.0)


@pytest.mark.parametrize("first,span", [
    (9430.0, None),  # 30 s after the window's start = 2 scrape intervals: covers the window
    (9430.5, 569.501),  # just over 2 intervals: measured from the first sample
])
def test_the_covered_span_allows_two_scrape_intervals(first, span):
    # Gaps 1, 1, 1, 15, 15, 15, 15: the median interval is 15 s (not the mean, not the smallest).
    times = [first, first + 1, first + 2, first + 3, first + 18, first + 33]
    answers = {NOW: [sample(10000.0)], RANGE: [series(times, pod="a"), series([first + 10, first + 25, first + 40])]}
    with PrometheusStandIn(answers) as prometheus:
        assert source(prometheus).covered_span() == (pytest.approx(span) if span else None)


def test_the_covered_span_of_nothing_is_none():
    with PrometheusStandIn({NOW: [sample(10000.0)]}) as prometheus:
        assert source(prometheus).covered_span() is None
    with PrometheusStandIn({RANGE: FULL_RANGE}) as prometheus:
        assert source(prometheus).covered_span() is None


def test_window_strings_round_to_whole_seconds_and_milliseconds():
    with PrometheusStandIn() as prometheus:
        assert source(prometheus, window_s=599.6).request_rate() == (None, None)
        source(prometheus).request_rate(1.0006)
        assert prometheus.queries == [RATE, INCREASE, f"sum(rate({SUCCESS}[1001ms]))",
                                      f"sum(increase({SUCCESS}[1001ms]))"]


def test_an_empty_selector_matches_the_metric_name_alone():
    with PrometheusStandIn() as prometheus:
        PrometheusSource(PrometheusConfig(url=prometheus.url, retries=0)).request_rate()
        assert prometheus.queries[0] == 'sum(rate({__name__=~"vllm:request_success_total|vllm_request_success_total"}[600s]))'


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf"])
def test_a_value_that_is_not_a_number_is_an_error(value):
    with PrometheusStandIn({RATE: [sample(value)]}) as prometheus:
        with pytest.raises(MetricsError) as error:
            source(prometheus).workload(GRID)
    assert str(error.value) == f"Prometheus at {prometheus.url} returned {float(value)} for {RATE}"


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf"])
def test_a_bucket_that_is_not_a_number_is_an_error(value):
    with PrometheusStandIn({**full_window(1.0, 600), JOINT: [sample(value, input_le="50", output_le="50")]}) as prometheus:
        with pytest.raises(MetricsError) as error:
            source(prometheus).workload(GRID)
    assert str(error.value) == f"Prometheus at {prometheus.url} returned {float(value)} for {JOINT}"


def test_a_rejected_query_is_an_error_naming_the_url_and_not_retried():
    with PrometheusStandIn({RATE: Failure(400)}) as prometheus:
        with pytest.raises(MetricsError) as error:
            source(prometheus, retries=2).workload(GRID)
        assert prometheus.queries == [RATE]
    body = Failure(400).body.encode()
    assert str(error.value) == f"Prometheus at {prometheus.url} rejected a query: HTTP Status Code 400 ({body!r})"


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_a_failing_server_is_retried_a_bounded_number_of_times(status):
    with PrometheusStandIn({RATE: Failure(status, "busy")}) as prometheus:
        with pytest.raises(MetricsError) as error:
            source(prometheus, retries=2).workload(GRID)
        assert prometheus.queries == [RATE] * 3  # the first try and 2 retries
    assert str(error.value) == f"Prometheus at {prometheus.url} rejected a query: HTTP Status Code {status} (b'busy')"


def test_the_retry_policy_is_the_configured_one():
    config = PrometheusConfig(url="http://127.0.0.1:9/", retries=4, backoff_s=0.25)
    retry = PrometheusSource(config)._client._session.get_adapter("http://127.0.0.1:9/api/v1/query").max_retries
    assert (retry.total, retry.connect, retry.read, retry.backoff_factor) == (4, 4, 4, 0.25)


@pytest.mark.parametrize("body,reason", [
    ("<html>not prometheus</html>", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
    ('{"status": "success"}', "KeyError: 'data'"),
    ('["data"]', "TypeError: list indices must be integers or slices, not str"),
])
def test_an_answer_that_is_not_prometheus_json_is_an_error(body, reason):
    with PrometheusStandIn({RATE: Garbled(body)}) as prometheus:
        with pytest.raises(MetricsError) as error:
            source(prometheus).workload(GRID)
    assert str(error.value) == f"Prometheus at {prometheus.url} sent an unreadable answer: {reason}"


def test_a_slow_server_times_out_after_a_bounded_number_of_tries():
    with PrometheusStandIn({RATE: HOLD}) as prometheus:
        with pytest.raises(MetricsError) as error:
            source(prometheus, retries=1, timeout_s=0.2).workload(GRID)
        assert prometheus.queries == [RATE] * 2
    assert str(error.value) == (f"Prometheus at {prometheus.url} is unreachable or too slow (timeout 0.2s, 1 retries): "
                                "ConnectionError")


def test_an_unreachable_server_is_an_error_naming_the_url():
    with socket.socket() as taken:  # bound, not listening: connections are refused
        taken.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(MetricsError) as error:
            PrometheusSource(PrometheusConfig(url=url, retries=0, timeout_s=1)).workload(GRID)
    assert str(error.value) == f"Prometheus at {url} is unreachable or too slow (timeout 1s, 0 retries): ConnectionError"


def test_the_url_may_end_in_a_slash_and_the_token_is_sent():
    with PrometheusStandIn() as prometheus:
        config = PrometheusConfig(url=prometheus.url + "/", bearer_token="s3cret", retries=0)
        PrometheusSource(config).request_rate()
        PrometheusSource(replace(config, bearer_token=None)).is_live()
        assert [r.path for r in prometheus.received] == ["/api/v1/query"] * 3
        assert [r.headers.get("Authorization") for r in prometheus.received] == ["Bearer s3cret"] * 2 + [None]


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


def test_https_is_verified_against_the_ca_bundle(certificate):
    with PrometheusStandIn({RATE: [sample(2.0)]}, tls=certificate) as prometheus:
        config = PrometheusConfig(url=prometheus.url, selector={"model_name": "llama", "namespace": 'prod"ns'},
                                  retries=0, ca_bundle=certificate[0])
        assert PrometheusSource(config).request_rate()[0] == 2.0
        with pytest.raises(MetricsError, match="unreachable or too slow .*: SSLError$"):
            PrometheusSource(replace(config, ca_bundle=None)).request_rate()


def test_single_samples_have_no_interval_to_allow():
    # One sample per series (no gaps): any start after the window's is a younger series.
    answers = {NOW: [sample(10000.0)], RANGE: [series([9401.0], pod="a"), series([9402.0], pod="b")]}
    with PrometheusStandIn(answers) as prometheus:
        assert source(prometheus).covered_span() == pytest.approx(599.001)


def test_less_than_one_request_is_still_a_mix():
    # increase() extrapolates, so a quiet window can hold 0.6 of a request in the grid and 0.4 beyond;
    # the increase query found nothing (a counter with one sample), so the count is 0.
    cells = [sample(0.6, input_le="50", output_le="50"), sample(0.4, input_le="2000", output_le="50")]
    answers = {**full_window(0.001, 0), JOINT: cells}
    del answers[INCREASE]
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus, min_requests=0).workload(GRID)
    assert (live.status, live.requests_in_window, live.mix_source) == ("ok", 0.0, MIX_ROUTER)
    assert live.notes[-1] == "40.00% of requests lie beyond the grid and are left out"
    assert live.workload.distribution == ((1.0, 0.0), (0.0, 0.0))
    prompt, generation = [sample(0.8, le="50"), sample(0.8, le="+Inf")], [sample(0.8, le="50"), sample(0.8, le="+Inf")]
    answers = {**full_window(0.001, 0), PROMPT_BUCKETS: prompt, GENERATION_BUCKETS: generation}
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus, min_requests=0).workload(GRID)
    assert (live.mix_source, live.workload.distribution) == (MIX_INDEPENDENT, ((1.0, 0.0), (0.0, 0.0)))


def test_a_young_series_keeps_its_span_when_there_is_no_mix():
    young = [series([9700.0 + 15 * k for k in range(21)])]
    span_rate, span_increase = f"sum(rate({SUCCESS}[300001ms]))", f"sum(increase({SUCCESS}[300001ms]))"
    answers = {**full_window(1.5, 900), RANGE: young, span_rate: [sample(3.0)]}
    with PrometheusStandIn(answers) as prometheus:
        without_histograms = source(prometheus).workload(GRID)
        prometheus.answers[JOINT] = [sample(900, input_le="2000", output_le="50")]
        all_beyond = source(prometheus).workload(GRID)
    for live in (without_histograms, all_beyond):
        assert (live.rate, live.requests_in_window, live.span_s, live.workload) == (3.0, 0.0, 300.001, None)


def test_a_count_just_under_min_requests_is_not_printed_as_reaching_it():
    # increase() extrapolates, so counts are fractional: 9.96 of a minimum of 10 reads "only 9.9", never "only 10 (< 10)"
    answers = {**full_window(0.0166, 9.96), PROMPT_BUCKETS: [sample(9.96, le="100"), sample(9.96, le="+Inf")],
               GENERATION_BUCKETS: [sample(9.96, le="50"), sample(9.96, le="+Inf")]}
    with PrometheusStandIn(answers) as prometheus:
        live = source(prometheus, min_requests=10).workload(GRID)
    assert live.status == "too_few_requests"
    assert "only 9.9 requests in the window (< 10): the mix is not trustworthy" in live.notes
