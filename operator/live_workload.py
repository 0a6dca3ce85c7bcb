"""The live workload of a service with `workload.source: prometheus`: which Prometheus and series to
read, and what the answer means for the operator. Unknown is never idle: missing or stale metrics give
no workload (the last good allocation stays); zero requests on healthy, current series is an idle
service (it falls to its floors after the cooldown). Fewer requests than `minRequests` still count
the rate (its noise is in the bounds, operator/core/noise.py) but not the size mix: the mix of the
last window that had enough is used with it, and with none yet there is no workload either.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from melange.operator.core.corrections import PoolObservation
from melange.operator.core.reconcile import LiveInput
from melange.operator.core.spec import ServiceSpec
from melange.solver.buckets import BucketGrid
from melange.solver.errors import UnavailableError
from melange.solver.metrics.metric_names import MODEL_LABEL, POOL_LABEL, VLLM_REQUEST_SUCCESS, vllm_name_regex
from melange.solver.metrics.prometheus_source import (LiveWorkload, PrometheusConfig, PrometheusSource,
                                                      pool_latency)
from melange.solver.profiles import Slo
from melange.solver.workload import Workload, make_workload


@dataclass(frozen=True)
class PrometheusDefaults:
    """The operator's flags, for specs that name no Prometheus of their own."""

    url: str | None = None
    bearer_token: str | None = None
    ca_bundle: str | None = None


def prometheus_config(spec: ServiceSpec, defaults: PrometheusDefaults, bearer_token: str | None,
                      ca_bundle: str | None) -> PrometheusConfig | None:
    """Where to read the service's traffic: vLLM's series of its served model (`model_name`), narrowed
    by the spec's selector. None when neither the spec nor the operator names a Prometheus."""
    prometheus = spec.workload.prometheus
    url = (prometheus.url if prometheus else None) or defaults.url
    if url is None:
        return None
    selector = {MODEL_LABEL: spec.model, **(dict(prometheus.selector) if prometheus else {})}
    config = PrometheusConfig(url=url, selector=selector, window_s=prometheus.window_s if prometheus else 600.0,
                              bearer_token=bearer_token or defaults.bearer_token,
                              ca_bundle=ca_bundle or defaults.ca_bundle)
    if prometheus is not None and prometheus.min_requests is not None:
        config = replace(config, min_requests=prometheus.min_requests)
    return config


def interpret(live: LiveWorkload, grid: BucketGrid, window: str, trusted: Workload | None = None) -> LiveInput:
    """The operator's reading of a Prometheus answer. `trusted`: the workload of the last reading with
    enough requests, whose size mix stands in for a window with too few (a service winding down to
    idle, or one whose traffic is a trickle); None, or on another grid: such a window gives nothing."""
    notes = "; ".join(live.notes)
    if live.status == "ok" and live.workload is not None:
        return LiveInput(live.workload, f"{live.requests_in_window:.0f} requests in {window} "
                                        f"({live.rate:.3g} req/s, mix from {live.mix_source})", window,
                         live.requests_in_window, mix_trusted=True)
    if live.status == "too_few_requests" and live.workload is not None and trusted is not None \
            and trusted.grid == grid:
        borrowed = "the size mix of the last window that had enough requests"
        workload = replace(trusted, rate=live.rate, notes=(*live.notes, f"{borrowed} is used"),
                           rate_source=live.workload.rate_source)
        return LiveInput(workload, f"{live.requests_in_window:.1f} requests in {window} ({live.rate:.3g} req/s; "
                                   f"too few for a size mix: {borrowed})", window, live.requests_in_window)
    if live.status == "ok" and live.rate == 0 and live.requests_in_window == 0:
        rows, columns = grid.shape
        idle = make_workload(0.0, grid, [[1.0 / (rows * columns)] * columns for _ in range(rows)], "prometheus",
                             notes=("no requests in the window: the service is idle",))
        return LiveInput(idle, f"no requests in {window} on current series (idle)", window, 0.0)
    return LiveInput(None, f"{live.status.replace('_', ' ')}: {notes}" if notes else live.status, window)


def read_pool(config: PrometheusConfig, option: str, grid: BucketGrid, slo: Slo,
              now_s: float) -> PoolObservation | None:
    """One pool's window, for its capacity correction (operator/core/corrections.py): the service's
    series narrowed to the pool's pods (`melange_ai_option`), their rate and size mix as the service's
    workload is read, the SLO's latency statistic and the waiting queue. None when the pool has no
    series or no request in the window. Its replicas are left to the operator (the ready ones)."""
    source = PrometheusSource(replace(config, selector={**config.selector, POOL_LABEL: option}, min_requests=1))
    live = source.workload(grid)
    if live.workload is None or live.status not in ("ok", "too_few_requests"):
        return None
    latency = pool_latency(source, slo.percentile)
    return PoolObservation(
        requests=live.requests_in_window, rate=live.rate, distribution=live.workload.distribution, replicas=None,
        tpot_ms=None if latency.tpot_s is None else 1e3 * latency.tpot_s,
        ttft_ms=None if latency.ttft_s is None else 1e3 * latency.ttft_s,
        waiting_per_replica=None if latency.waiting is None or not latency.pods else latency.waiting / latency.pods,
        end_s=now_s, window_s=live.span_s or config.window_s)


def pools_with_series(config: PrometheusConfig) -> set[str]:
    """The pools (values of `melange_ai_option`) whose request counter has a current series: one query,
    so a service whose pods carry no pool label costs no more."""
    source = PrometheusSource(config)
    selector = source._selector(vllm_name_regex(VLLM_REQUEST_SUCCESS))
    return {item["metric"].get(POOL_LABEL) for item in source.query(f"count by ({POOL_LABEL}) ({selector})")
            if item["metric"].get(POOL_LABEL)}


def _read_recent(source: PrometheusSource, within: LiveWorkload, grid: BucketGrid, scale_up: tuple[str, float],
                 trusted: Workload | None) -> LiveInput | None:
    """The scale-up window's reading (inside the window just read, `within`), its mix borrowed from
    `trusted` when it holds too few requests; None when it gives no workload."""
    text, seconds = scale_up
    try:
        recent = interpret(source.over(seconds).workload(grid, within), grid, text, trusted)
    except UnavailableError:
        return None
    return recent if recent.workload is not None else None


def read_live(config: PrometheusConfig | None, grid: BucketGrid, window: str, pools: Sequence[str] = (),
              slo: Slo | None = None, trusted: Workload | None = None,
              scale_up: tuple[str, float] | None = None) -> LiveInput:
    """Query Prometheus (blocking: run it in a thread) and interpret the answer (`trusted`: see
    `interpret`); with `scale_up` (the scale-up window, as written and in seconds), the same over it;
    with `pools` (option names) and the SLO, also each pool's window. A scale-up window or a pool that
    cannot be read is left out (a pool's correction then decays); neither makes the workload
    unavailable."""
    if config is None:
        return LiveInput(None, "no Prometheus URL: set spec.workload.prometheus.url or the operator's "
                               "--prometheus-url", window)
    try:
        source = PrometheusSource(config)
        reading = source.workload(grid)
        live = interpret(reading, grid, window, trusted)
    except UnavailableError as error:
        return LiveInput(None, str(error), window)
    if live.workload is not None and scale_up is not None:
        live = replace(live, recent=_read_recent(source, reading, grid, scale_up,
                                                 live.workload if live.mix_trusted else trusted))
    if live.workload is None or not pools or slo is None:
        return live
    now = time.time()
    seen = {}
    try:
        present = pools_with_series(config)
    except UnavailableError:
        return live
    for option in pools:
        if option not in present:
            continue
        try:
            observation = read_pool(config, option, grid, slo, now)
        except UnavailableError:
            continue
        if observation is not None:
            seen[option] = observation
    return replace(live, pools=seen)
