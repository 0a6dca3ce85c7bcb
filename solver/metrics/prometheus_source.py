"""Live workload from Prometheus: a vLLM service's request rate and size mix on any solver grid.

The mix comes from the size-aware router's joint (input, output) counter when Prometheus has it,
else from vLLM's prompt and generation token histograms combined as if input and output lengths
were independent (the result says so). Faults never turn into a silent zero: an unreachable or
failing Prometheus raises MetricsError naming the URL; no series, stale series and too few
requests are reported in `LiveWorkload.status` for the caller to decide.
"""
from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from melange.solver.buckets import BucketGrid
from melange.solver.errors import InputError, UnavailableError
from melange.solver.metrics.histograms import cumulative_to_intervals, rebin, rebin_joint
from melange.solver.metrics.metric_names import (DEFAULT_MIN_REQUESTS, ROUTER_INPUT_LABEL, ROUTER_JOINT_REQUESTS,
                                         ROUTER_OUTPUT_LABEL, ROUTER_SIZE_EDGES, VLLM_GENERATION_TOKENS,
                                         VLLM_PROMPT_TOKENS, VLLM_REQUEST_SUCCESS, VLLM_TPOT_HISTOGRAMS, VLLM_TTFT,
                                         VLLM_WAITING, vllm_name_regex)
from melange.solver.workload import Workload, make_workload

SELECTOR_LABELS = ("model_name", "namespace", "job", "pod", "service", "instance")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

MIX_ROUTER = "router_joint"
MIX_INDEPENDENT = "vllm_marginals_independent"


class MetricsError(UnavailableError):
    """Prometheus could not give a trustworthy answer (down, slow, an error, NaN). Names the URL."""

    what = "metrics"


def parse_duration(text: str, where: str = "window") -> float:
    """Seconds in a Prometheus-style duration such as '30s', '10m', '1h'."""
    match = _DURATION.match(str(text).strip())
    if not match or float(match.group(1)) <= 0:
        raise InputError(where, f"cannot read duration {text!r}", "a positive number with ms, s, m, h or d, e.g. 10m")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def escape_label_value(value: str) -> str:
    """A PromQL double-quoted string body for `value`: backslash, quote and newlines escaped, so a
    label value can never end the string and inject PromQL."""
    return (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r"))


def label_matchers(selector: Mapping[str, str]) -> str:
    """`name="value",...` for an equality selector; label names are checked, values escaped."""
    parts = []
    for name in sorted(selector):
        if not _LABEL_NAME.match(name) or name == "__name__":
            raise InputError(f"selector.{name}", "not a valid label name", "[a-zA-Z_][a-zA-Z0-9_]*, not __name__")
        value = selector[name]
        if not isinstance(value, str):
            raise InputError(f"selector.{name}", f"expected a string, got {value!r}")
        parts.append(f'{name}="{escape_label_value(value)}"')
    return ",".join(parts)


@dataclass(frozen=True)
class PrometheusConfig:
    """Where and what to query. `selector` is label equality (model_name, namespace, job, ...)."""

    url: str
    selector: Mapping[str, str] = field(default_factory=dict)
    window_s: float = 600.0
    bearer_token: str | None = None
    ca_bundle: str | None = None
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.5
    min_requests: int = DEFAULT_MIN_REQUESTS


def read_bearer_token(token_file: str | None = None, token_env: str | None = None) -> str | None:
    """The bearer token from a file (e.g. a mounted service-account token) or an environment variable."""
    if token_file:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError as error:
            raise InputError(token_file, f"cannot read bearer token: {error.strerror}") from None
    if token_env:
        value = os.environ.get(token_env)
        if not value:
            raise InputError(token_env, "environment variable is not set or empty")
        return value.strip()
    return None


@dataclass(frozen=True)
class LiveWorkload:
    """`status`: ok; too_few_requests (the mix rests on fewer than `min_requests` requests);
    no_series (nothing matches the selector: a rate of 0 here means "unknown", not "idle"); stale
    (the series stopped updating). `workload` is None when there is no mix to report."""

    status: str
    rate: float
    requests_in_window: float
    window_s: float
    mix_source: str | None
    workload: Workload | None
    notes: tuple[str, ...] = ()
    span_s: float | None = None  # the seconds measured over when the series are younger than the window

    @property
    def trustworthy(self) -> bool:
        return self.status == "ok"


class PrometheusSource:
    """Queries one Prometheus server; thin shell over prometheus-api-client."""

    def __init__(self, config: PrometheusConfig) -> None:
        if not re.match(r"^https?://", config.url or ""):
            raise InputError("prometheus.url", f"not an http(s) URL: {config.url!r}", "http://host:9090")
        if not (config.window_s > 0) or math.isinf(config.window_s):
            raise InputError("prometheus.window", f"got {config.window_s!r}", "a positive duration")
        self.config = config
        self._matchers = label_matchers(config.selector)
        session = requests.Session()
        session.verify = config.ca_bundle or True
        retry = Retry(total=config.retries, connect=config.retries, read=config.retries,
                      backoff_factor=config.backoff_s, status_forcelist=(429, 500, 502, 503, 504),
                      allowed_methods=("GET",), raise_on_status=False)
        headers = {"Authorization": f"Bearer {config.bearer_token}"} if config.bearer_token else None
        self._client = PrometheusConnect(url=config.url.rstrip("/"), headers=headers, retry=retry, session=session,
                                         timeout=config.timeout_s)

    def _selector(self, name_regex: str) -> str:
        extra = f",{self._matchers}" if self._matchers else ""
        return f'{{__name__=~"{name_regex}"{extra}}}'

    def _window(self, seconds: float | None = None) -> str:
        if seconds is None:
            return f"{int(round(self.config.window_s))}s"
        return f"{int(round(1000 * seconds))}ms"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant query; any failure becomes a MetricsError naming the URL."""
        try:
            return self._client.custom_query(promql)
        except PrometheusApiClientException as error:
            raise MetricsError(f"Prometheus at {self.config.url} rejected a query: {error}") from None
        except (requests.JSONDecodeError, KeyError, TypeError) as error:
            # A body that is not JSON, or JSON without data.result. requests' JSONDecodeError is
            # also a RequestException, so it is caught before that.
            raise MetricsError(f"Prometheus at {self.config.url} sent an unreadable answer: "
                               f"{type(error).__name__}: {error}") from None
        except requests.RequestException as error:
            raise MetricsError(f"Prometheus at {self.config.url} is unreachable or too slow "
                               f"(timeout {self.config.timeout_s:g}s, {self.config.retries} retries): "
                               f"{type(error).__name__}") from None

    def _scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        if not result:
            return None
        value = float(result[0]["value"][1])
        if not math.isfinite(value):
            raise MetricsError(f"Prometheus at {self.config.url} returned {value} for {promql}")
        return value

    def _vector(self, promql: str, *labels: str) -> dict[tuple[float, ...], float]:
        values: dict[tuple[float, ...], float] = {}
        for sample in self.query(promql):
            value = float(sample["value"][1])
            if math.isnan(value) or math.isinf(value):
                raise MetricsError(f"Prometheus at {self.config.url} returned {value} for {promql}")
            key = tuple(float(sample["metric"].get(label, "nan")) for label in labels)
            if any(math.isnan(k) for k in key):
                continue
            values[key] = values.get(key, 0.0) + value
        return values

    def request_rate(self, seconds: float | None = None) -> tuple[float | None, float | None]:
        """Requests/s and requests finished over the window (or the last `seconds`); (None, None)
        when no series matches."""
        selector = self._selector(vllm_name_regex(VLLM_REQUEST_SUCCESS))
        rate = self._scalar(f"sum(rate({selector}[{self._window(seconds)}]))")
        count = self._scalar(f"sum(increase({selector}[{self._window(seconds)}]))")
        return rate, count

    def covered_span(self) -> float | None:
        """Seconds from the request counter's first sample in the window to now, when the series
        are younger than the window (a new service, a Prometheus restart); None when the data
        covers the whole window.

        `rate()` divides by the whole window, so over a series younger than it the rate comes out
        too low (it extrapolates at most half a scrape interval past the first sample:
        prometheus/promql/functions.go, extrapolatedRate)."""
        selector = self._selector(vllm_name_regex(VLLM_REQUEST_SUCCESS))
        now = self._scalar("vector(time())")
        series = self.query(f"{selector}[{self._window()}]")
        times = [[float(t) for t, _ in item["values"]] for item in series]
        times = [t for t in times if t]
        if now is None or not times:
            return None
        first = min(t[0] for t in times)
        gaps = sorted(b - a for t in times for a, b in zip(t, t[1:]))
        interval = gaps[len(gaps) // 2] if gaps else 0.0
        if first - (now - self.config.window_s) <= 2 * interval:
            return None
        return now - first + 0.001  # the range must hold the first sample itself

    def is_live(self) -> bool:
        """True when the request counter still has a current (non-stale) sample."""
        return self._scalar(f"count({self._selector(vllm_name_regex(VLLM_REQUEST_SUCCESS))})") is not None

    def router_mix(self, grid: BucketGrid) -> tuple[list[list[float]], float] | None:
        """The router's joint counts on `grid` (and the count beyond it), or None if it has none."""
        promql = (f"sum by ({ROUTER_INPUT_LABEL}, {ROUTER_OUTPUT_LABEL}) "
                  f"(increase({self._selector(ROUTER_JOINT_REQUESTS)}[{self._window()}]))")
        cells = self._vector(promql, ROUTER_INPUT_LABEL, ROUTER_OUTPUT_LABEL)
        if not cells or sum(cells.values()) <= 0:
            return None
        return rebin_joint({(i, o): c for (i, o), c in cells.items()}, ROUTER_SIZE_EDGES, grid.input_edges,
                           grid.output_edges)

    def marginal(self, metric: str, edges: tuple[int, ...]) -> tuple[list[float], float] | None:
        """A vLLM token histogram's counts over the window on solver `edges`, or None if it has none."""
        promql = f"sum by (le) (increase({self._selector(vllm_name_regex(metric, '_bucket'))}[{self._window()}]))"
        buckets = {key[0]: value for key, value in self._vector(promql, "le").items()}
        if not buckets or max(buckets.values()) <= 0:
            return None
        rebinned = rebin(cumulative_to_intervals(buckets), edges)
        return list(rebinned.counts), rebinned.beyond

    def over(self, window_s: float) -> PrometheusSource:
        """The same server and selector over another window, on the same connection."""
        other = copy.copy(self)
        other.config = replace(self.config, window_s=window_s)
        return other

    def workload(self, grid: BucketGrid, within: LiveWorkload | None = None) -> LiveWorkload:
        """The live workload on `grid`; `within`: the reading of a longer window just taken, whose
        liveness and series' age this shorter window shares (two queries fewer). Raises MetricsError
        when Prometheus fails."""
        rate, count = self.request_rate()
        window = self.config.window_s
        if rate is None:
            return LiveWorkload("no_series", 0.0, 0.0, window, None, None,
                                (f"no series match {self._selector(vllm_name_regex(VLLM_REQUEST_SUCCESS))} "
                                 f"at {self.config.url}",))
        notes: list[str] = []
        if within is None:
            span = self.covered_span()
        else:
            span = within.span_s if within.span_s is not None and within.span_s < window else None
        if span is not None:
            rate, count = self.request_rate(span)
            rate = rate or 0.0
            notes.append(f"the request counter's series cover only the last {span:.0f} s of the {window:g} s "
                         f"window (a new service or a Prometheus restart): the rate is measured over those {span:.0f} s")
        live = self.is_live() if within is None else within.status != "stale"
        status = "ok" if live else "stale"
        if status == "stale":
            notes.append("the request counter has no current sample: the service or its scrape target is gone")
        elif not rate and not count:
            # Current series that did not move: the service is idle (its histograms did not move either,
            # so there is no mix to read, and none is needed for a rate of 0).
            return LiveWorkload("ok", 0.0, 0.0, window, None, None,
                                tuple(notes + ["no requests in the window: the service is idle"]), span)
        joint = self.router_mix(grid)
        if joint is not None:
            matrix, beyond = joint
            source = MIX_ROUTER
            notes.append("size mix from the router's joint (input, output) counter")
        else:
            inputs = self.marginal(VLLM_PROMPT_TOKENS, grid.input_edges)
            outputs = self.marginal(VLLM_GENERATION_TOKENS, grid.output_edges)
            if inputs is None or outputs is None:
                return LiveWorkload("no_series" if status == "ok" else status, rate, count or 0.0, window, None,
                                    None, tuple(notes + ["no token histograms in the window"]), span)
            matrix, beyond = _independent(inputs, outputs)
            source = MIX_INDEPENDENT
            notes.append("size mix from vLLM's prompt and generation histograms, assuming input and output "
                         "lengths are independent")
        placed = sum(map(sum, matrix))
        if placed <= 0:
            return LiveWorkload(status, rate, count or 0.0, window, source, None,
                                tuple(notes + ["every request lies beyond the grid"]), span)
        if beyond > 0:
            notes.append(f"{100 * beyond / (placed + beyond):.2f}% of requests lie beyond the grid and are left out")
        requests_seen = count or 0.0
        if status == "ok" and requests_seen < self.config.min_requests:
            status = "too_few_requests"
            # floored, so that 9.96 does not read as "only 10 (< 10)"
            notes.append(f"only {math.floor(10 * requests_seen) / 10:g} requests in the window "
                         f"(< {self.config.min_requests}): "
                         "the mix is not trustworthy")
        workload = make_workload(rate, grid, [[v / placed for v in row] for row in matrix], "prometheus",
                                 notes=notes, rate_source=f"measured by Prometheus at {self.config.url}")
        return LiveWorkload(status, rate, requests_seen, window, source, workload, tuple(notes), span)


@dataclass(frozen=True)
class PoolLatency:
    """One pool's latency over the window at the SLO's statistic (seconds; None: no series or no
    request), the histogram TPOT was read from, requests waiting (the pods' means over the window,
    summed), and how many pods reported in the window."""

    tpot_s: float | None
    ttft_s: float | None
    tpot_metric: str | None
    waiting: float | None
    pods: int


def latency_query(selector_for: Callable[[str], str], window: str, percentile: float | None) -> str:
    """PromQL for a latency histogram's statistic over `window`: the mean (rate of `_sum` over rate of
    `_count`, summed over the pods), or the percentile by `histogram_quantile` over the pods' buckets
    summed by `le`. `selector_for(suffix)` is the series selector of the histogram's `suffix` series."""
    if percentile is None:
        return f"sum(rate({selector_for('_sum')}[{window}])) / sum(rate({selector_for('_count')}[{window}]))"
    return f"histogram_quantile({percentile / 100:g}, sum by (le) (rate({selector_for('_bucket')}[{window}])))"


def pool_latency(source: PrometheusSource, percentile: float | None) -> PoolLatency:
    """The latency statistic and waiting queue of the series `source` selects (one pool: its selector
    carries the pool label). NaN (no request in the window) reads as None."""
    window = source._window()

    def statistic(metric: str) -> float | None:
        result = source.query(latency_query(lambda suffix: source._selector(vllm_name_regex(metric, suffix)),
                                            window, percentile))
        if not result:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) and value >= 0 else None

    tpot, tpot_metric = None, None
    for metric in VLLM_TPOT_HISTOGRAMS:
        tpot = statistic(metric)
        if tpot is not None:
            tpot_metric = metric
            break
    ttft = statistic(VLLM_TTFT)
    waiting_selector = source._selector(vllm_name_regex(VLLM_WAITING))
    means = source.query(f"avg_over_time({waiting_selector}[{window}])")
    values = [float(item["value"][1]) for item in means]
    values = [v for v in values if math.isfinite(v)]
    return PoolLatency(tpot, ttft, tpot_metric, sum(values) if values else None, len(values))


def _independent(inputs: tuple[list[float], float], outputs: tuple[list[float], float]) -> tuple[list[list[float]], float]:
    """Joint counts as the product of the marginals (scaled to the input histogram's total)."""
    input_counts, input_beyond = inputs
    output_counts, output_beyond = outputs
    input_total = sum(input_counts) + input_beyond
    output_total = sum(output_counts) + output_beyond
    if input_total <= 0 or output_total <= 0:
        return [[0.0] * len(output_counts) for _ in input_counts], 0.0
    matrix = [[a * b / output_total for b in output_counts] for a in input_counts]
    placed = sum(map(sum, matrix))
    return matrix, max(0.0, input_total - placed)
