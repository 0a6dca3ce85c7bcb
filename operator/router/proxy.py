"""The size-aware router: an OpenAI-compatible proxy that sends each request to a GPU pool by the
routing table's weights for its size bucket, so the solver's heterogeneous allocation holds, and
within the pool to the endpoint with the fewest requests in flight.

    python -m melange.operator.router --table /etc/melange/routing.json --port 8080 --model-name NAME
    melange-router --table-configmap chat-routing --discover-service chat   # in a cluster (the operator's way)

With `--table-configmap` and `--discover-service` the router watches its table's ConfigMap and its
pools' EndpointSlices through the Kubernetes API (see discovery.py); with `--table` it reads a file
and reaches each pool through the table's URLs.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
from aiohttp import web
from yarl import URL
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from melange.operator.router.discovery import (Acknowledger, api_client, config_map_watch, endpoint_slices_watch, own_namespace,
                                               read_endpoint_map, ready_endpoints)
from melange.operator.router.request_size import estimate_input_tokens, requested_output_tokens, tokenize_request
from melange.operator.router.routing_config import RoutingTable, load_table, table_from_dict
from melange.operator.router.usage import RequestShape, UsageStream, request_shape, sizes_of_answer, usage_request
from melange.solver.routing import TABLE_KEY
from melange.solver.command_line import OneLineParser, run_reporting_errors
from melange.solver.errors import InputError
from melange.solver.metrics.metric_names import (MODEL_LABEL, ROUTER_INPUT_LABEL, ROUTER_JOINT_REQUESTS, ROUTER_OUTPUT_LABEL,
                                         ROUTER_SIZE_EDGES)

log = logging.getLogger("melange.router")

MAX_BODY_BYTES = 8 * 1024 * 1024
UNHEALTHY_BACKOFF_S = 5.0
TOKENIZE_TIMEOUT_S = 2.0
PROXIED_PATHS = ("/v1/completions", "/v1/chat/completions")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host", "upgrade"}


def _size_cell(tokens: int) -> str:
    for edge in ROUTER_SIZE_EDGES:
        if tokens <= edge:
            return str(edge)
    return "+Inf"


class RouterMetrics:
    """What the workload source and dashboards read: the joint size counter and per-pool health."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.joint = Counter(ROUTER_JOINT_REQUESTS.removesuffix("_total"), "Requests by input and output tokens.",
                             [MODEL_LABEL, ROUTER_INPUT_LABEL, ROUTER_OUTPUT_LABEL], registry=registry)
        self.requests = Counter("melange_router_pool_requests", "Requests sent to a pool.", ["pool"], registry=registry)
        self.errors = Counter("melange_router_pool_errors", "Requests a pool failed.", ["pool"], registry=registry)
        self.client_disconnects = Counter(
            "melange_router_client_disconnects",
            "Requests whose client left before the whole answer reached it; their upstream request is cancelled.",
            ["pool"], registry=registry)
        self.in_flight = Gauge("melange_router_pool_in_flight", "Requests in flight per pool.", ["pool"],
                               registry=registry)
        self.latency = Histogram("melange_router_pool_latency_seconds", "Upstream time to the full response.",
                                 ["pool"], registry=registry)
        self.no_pool = Counter("melange_router_unroutable", "Requests no pool could take.", registry=registry)
        self.tokenize_fallbacks = Counter("melange_router_tokenize_fallbacks",
                                          "Requests estimated because /tokenize did not answer.", registry=registry)
        self.reloads = Counter("melange_router_table_reloads", "Routing-table reloads.", ["result"], registry=registry)
        self.table_info = Gauge("melange_router_table_info", "The routing table served (1 for its version).",
                                ["version"], registry=registry)
        self.endpoints = Gauge("melange_router_pool_endpoints", "Ready endpoints per pool.", ["pool"],
                               registry=registry)
        self._pool_series: dict[str, PoolSeries] = {}
        self._joint_cells: dict[tuple[str, str, str], Counter] = {}

    def joint_cell(self, model: str, input_cell: str, output_cell: str) -> Counter:
        """The joint size counter's child for one cell, looked up once per cell rather than once per request."""
        key = (model, input_cell, output_cell)
        child = self._joint_cells.get(key)
        if child is None:
            child = self._joint_cells[key] = self.joint.labels(model, input_cell, output_cell)
        return child

    def pool(self, name: str) -> PoolSeries:
        """The pool's labelled series, looked up once per pool rather than once per request."""
        series = self._pool_series.get(name)
        if series is None:
            series = self._pool_series[name] = PoolSeries(self.requests.labels(name), self.errors.labels(name),
                                                          self.client_disconnects.labels(name),
                                                          self.in_flight.labels(name), self.latency.labels(name))
        return series


@dataclass(frozen=True)
class PoolSeries:
    """One pool's children of the per-pool metrics."""

    requests: Counter
    errors: Counter
    client_disconnects: Counter
    in_flight: Gauge
    latency: Histogram


@dataclass
class PoolState:
    """In-flight counts per upstream URL and when the pool may be tried again."""

    outstanding: dict[str, int] = field(default_factory=dict)
    unhealthy_until: float = 0.0


@dataclass(frozen=True)
class ClusterSource:
    """Where a router in a cluster reads its table and endpoints: its namespace, the routing
    ConfigMap, the service whose pools' EndpointSlices it follows (None: the table's URLs), and the
    ConfigMap and key (its pod's name) where it acknowledges the table version it serves."""

    namespace: str
    config_map: str
    service: str | None = None
    ack_config_map: str | None = None
    pod: str | None = None


class Router:
    """Holds the current table and each pool's endpoints, picks pools and endpoints, proxies requests."""

    def __init__(self, table_path: Path | None = None, model_name: str = "", upstream_timeout_s: float = 600.0,
                 connect_timeout_s: float = 2.0, seed: int | None = None, tokenize: bool = False,
                 cluster: ClusterSource | None = None) -> None:
        if (table_path is None) == (cluster is None):
            raise InputError("--table/--table-configmap", "give exactly one", "a file or a ConfigMap")
        self.table_path = Path(table_path) if table_path is not None else None
        self.cluster = cluster
        self.model_name = model_name
        self.tokenize = tokenize
        self.metrics = RouterMetrics(CollectorRegistry())
        self.table: RoutingTable | None = None
        if self.table_path is not None:
            self._use_table(load_table(self.table_path))
        self._signature = self._file_signature()
        # Pool -> ready endpoint URLs, from discovery; None: the table's URLs are the endpoints.
        self.endpoints: dict[str, tuple[str, ...]] | None = None if cluster is None or cluster.service is None else {}
        self._slices: list[dict[str, Any]] = []
        self._endpoint_map: dict[str, str] | None = read_endpoint_map()
        self.acknowledger: Acknowledger | None = None
        self.pools: dict[str, PoolState] = {}
        self._rng = random.Random(seed)
        self._timeout = aiohttp.ClientTimeout(total=upstream_timeout_s, sock_connect=connect_timeout_s)
        self._tokenize_timeout = aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_S, sock_connect=connect_timeout_s)
        self.session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], URL] = {}

    def _use_table(self, table: RoutingTable) -> None:
        if self.table is not None and self.table.version != table.version:
            self.metrics.table_info.remove(self.table.version)
        self.table = table
        self.metrics.table_info.labels(table.version).set(1)

    def on_config_maps(self, objects: list[dict[str, Any]]) -> None:
        """A new state of the routing ConfigMap: serve its table; a bad one is logged and the last good
        table stays."""
        data = next((o.get("data") or {} for o in objects), {})
        if TABLE_KEY not in data:
            return
        try:
            table = table_from_dict(json.loads(data[TABLE_KEY]), f"ConfigMap {self.cluster.config_map}")
        except (ValueError, InputError) as error:
            self.metrics.reloads.labels("rejected").inc()
            log.error("routing table rejected, keeping the last good one: %s", error)
            return
        if self.table is None or table != self.table:
            self._use_table(table)
            self.metrics.reloads.labels("ok").inc()
            log.info("routing table %s from ConfigMap %s", table.version or "(unversioned)", self.cluster.config_map)
        if self.acknowledger is not None and table.version:
            self.acknowledger.acknowledge(table.version, self.in_flight_elsewhere())

    def in_flight(self) -> dict[str, int]:
        """Requests in flight per pool: every pool of the table, and any other still holding requests."""
        counts = {pool: 0 for pool in (self.table.pools if self.table is not None else ())}
        for pool, state in self.pools.items():
            count = sum(state.outstanding.values())
            if count or pool in counts:
                counts[pool] = count
        return counts

    def in_flight_elsewhere(self) -> dict[str, int]:
        """Requests in flight to pools the table no longer routes to (sent before it changed); those
        with none left out."""
        pools = self.table.pools if self.table is not None else {}
        return {pool: count for pool, state in self.pools.items()
                if pool not in pools and (count := sum(state.outstanding.values()))}

    def finished_elsewhere(self) -> None:
        """A request to a pool the table no longer routes to finished: tell the acknowledger (it writes
        the counts at most once a second, and none left as the last)."""
        if self.acknowledger is not None:
            self.acknowledger.report(self.in_flight_elsewhere())

    def on_endpoint_slices(self, slices: list[dict[str, Any]]) -> None:
        """A new state of the pools' EndpointSlices."""
        self._slices = slices
        self._resolve_endpoints()

    def _resolve_endpoints(self) -> None:
        endpoints = ready_endpoints(self._slices, self._endpoint_map)
        for pool in set(self.endpoints or {}) | set(endpoints):
            self.metrics.endpoints.labels(pool).set(len(endpoints.get(pool, ())))
        self.endpoints = endpoints

    def refresh_endpoint_map(self) -> None:
        """Re-read the test hook's endpoint map (see discovery.py)."""
        endpoint_map = read_endpoint_map()
        if endpoint_map != self._endpoint_map:
            self._endpoint_map = endpoint_map
            if self.endpoints is not None:
                self._resolve_endpoints()

    def pool_urls(self, pool: str) -> tuple[str, ...]:
        """Where a pool's requests go: its ready endpoints (discovery), else the table's URLs."""
        if self.endpoints is not None:
            return self.endpoints.get(pool, ())
        return self.table.pools.get(pool, ()) if self.table is not None else ()

    def not_ready(self) -> str | None:
        """Why the router cannot serve every request size the table routes; None when it can."""
        if self.table is None:
            return "no routing table loaded yet"
        table = self.table
        rows = [table.input_weights[i] for i in range(table.grid.shape[0])]
        if table.joint_weights is not None:
            rows += [cell for row in table.joint_weights for cell in row]
        for weights in rows:
            routed = [pool for pool, weight in weights.items() if weight > 0]
            if routed and not any(self.pool_urls(pool) for pool in routed):
                return f"no ready endpoint in pools {', '.join(sorted(routed))}"
        return None

    def _file_signature(self) -> tuple[float, int] | None:
        if self.table_path is None:
            return None
        try:
            stat = os.stat(self.table_path)  # follows the ConfigMap's symlink swap
        except OSError:
            return None
        return stat.st_mtime, stat.st_size

    def reload_if_changed(self) -> None:
        """Swap in a changed table file; a bad file is logged and the last good table stays."""
        signature = self._file_signature()
        if self.table_path is None or signature == self._signature:
            return
        self._signature = signature
        try:
            self._use_table(load_table(self.table_path))
        except InputError as error:
            self.metrics.reloads.labels("rejected").inc()
            log.error("routing table rejected, keeping the last good one: %s", error)
            return
        self.metrics.reloads.labels("ok").inc()
        log.info("routing table reloaded from %s", self.table_path)

    def candidates(self, input_tokens: int, output_tokens: int | None) -> list[str]:
        """Pools to try, in order: one drawn by the bucket's weights, then the others that serve it (a
        pool without a ready endpoint is left out)."""
        table = self.table
        if table is None:
            return []
        i = table.grid.input_bucket(input_tokens)
        if i is None:
            i = table.grid.shape[0] - 1  # longer than the grid: the pools of the longest bucket
        j = table.grid.output_bucket(output_tokens) if output_tokens is not None else None
        weights = {p: w for p, w in table.weights(i, j).items() if w > 0 and self.pool_urls(p)}
        now = time.monotonic()
        pools = self.pools
        healthy = {p: w for p, w in weights.items() if p not in pools or pools[p].unhealthy_until <= now}
        pool_weights = healthy or weights
        if not pool_weights:
            return []
        names = list(pool_weights)
        first = self._rng.choices(names, weights=[pool_weights[n] for n in names])[0]
        return [first] + sorted((n for n in names if n != first), key=lambda n: -pool_weights[n])

    def pick_url(self, pool: str) -> str:
        """The pool's endpoint with the fewest requests in flight; ties are drawn at random, so that
        endpoints equally busy (an idle pool, a new pod) share the next requests."""
        state = self.pools.get(pool)
        if state is None:
            state = self.pools[pool] = PoolState()
        urls = self.pool_urls(pool)
        outstanding = state.outstanding
        counts = [outstanding.get(u, 0) for u in urls]
        fewest = min(counts)
        tied = [u for u, n in zip(urls, counts) if n == fewest]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)

    def upstream_url(self, base: str, path: str) -> URL:
        """`base` + `path`, parsed once and reused (URL parsing is a visible share of a proxied request)."""
        key = (base, path)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = URL(base + path)
        return url

    def mark_unhealthy(self, pool: str) -> None:
        self.pools.setdefault(pool, PoolState()).unhealthy_until = time.monotonic() + UNHEALTHY_BACKOFF_S

    async def input_tokens(self, body: Mapping[str, Any]) -> int:
        """The request's input tokens: counted by an upstream's `/tokenize` when `tokenize` is on
        and one answers in time, estimated from the text otherwise."""
        request = tokenize_request(body) if self.tokenize else None
        if request is not None:
            now = time.monotonic()
            for pool in self.table.pools if self.table is not None else ():
                if self.pools.get(pool, PoolState()).unhealthy_until > now or not self.pool_urls(pool):
                    continue
                try:
                    async with self.session.post(f"{self.pick_url(pool)}/tokenize", json=request,
                                                 timeout=self._tokenize_timeout) as answer:
                        count = (await answer.json(content_type=None)).get("count") if answer.status == 200 else None
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
                    count = None
                if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                    return count
                break  # every pool serves the same model: one failed count is enough to fall back
            self.metrics.tokenize_fallbacks.inc()
        return estimate_input_tokens(body)

    def record_sizes(self, sizes: list[tuple[int, int]]) -> None:
        """Count a request in the joint size counter as vLLM counts it: once per sequence, by its
        (input, output) tokens (`usage.sequence_sizes`)."""
        for input_tokens, output_tokens in sizes:
            self.metrics.joint_cell(self.model_name, _size_cell(input_tokens), _size_cell(output_tokens)).inc()


# How the router is served: a client that disconnects cancels its handler, and with it the upstream
# request (aiohttp leaves handler_cancellation off by default since 3.9).
SERVER_OPTIONS: dict[str, Any] = {"access_log": None, "handler_cancellation": True}

ROUTER_KEY: web.AppKey[Router] = web.AppKey("router", Router)
RELOAD_KEY: web.AppKey[float] = web.AppKey("reload_interval_s", float)


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


class ClientGone(Exception):
    """A write to the client failed: it closed the connection."""


async def _to_client(write) -> None:
    """Await a write to the client, telling its failure apart from an upstream's."""
    try:
        await write
    except ConnectionError as error:  # aiohttp's ClientConnectionResetError is one
        raise ClientGone() from error


async def proxy(request: web.Request) -> web.StreamResponse:
    """Route one completion request; retry once on another pool if nothing was sent yet."""
    router: Router = request.app[ROUTER_KEY]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes", "request_too_large")
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError as error:
        return _error(400, f"request body is not a JSON object: {error}", "invalid_request_error")
    input_tokens = await router.input_tokens(body)
    output_tokens = requested_output_tokens(body)
    pools = router.candidates(input_tokens, output_tokens)
    if not pools:
        router.metrics.no_pool.inc()
        return _error(503, "no GPU pool can serve a request of this size", "no_pool_available")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    chat = request.path.endswith("/chat/completions")
    shape = request_shape(body, chat)
    # Every stream asks for usage, so that every request is counted by size.
    asking = usage_request(body)
    hide_usage = asking is not None
    if hide_usage:
        raw = json.dumps(asking).encode()
    for attempt, pool in enumerate(pools[:2]):
        if not router.pool_urls(pool):  # its last ready endpoint went while the first attempt ran
            continue
        url = router.pick_url(pool)
        state = router.pools[pool]
        state.outstanding[url] = state.outstanding.get(url, 0) + 1
        series = router.metrics.pool(pool)
        series.requests.inc()
        series.in_flight.inc()
        started = time.monotonic()
        response: web.StreamResponse | None = None
        stream: UsageStream | None = None
        try:
            async with router.session.post(router.upstream_url(url, request.path), data=raw, headers=headers,
                                           timeout=router._timeout) as upstream:
                reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
                if upstream.content_type != "text/event-stream":  # a whole body: one write, and still retryable
                    answer = await upstream.read()
                    router.record_sizes(sizes_of_answer(answer, shape, input_tokens))
                    response = web.Response(body=answer, status=upstream.status, headers=reply_headers)
                else:
                    response = web.StreamResponse(status=upstream.status, headers=reply_headers)
                    stream = UsageStream(hide_usage, chat, per_choice=shape.sequences > 1)
                    try:
                        await _to_client(response.prepare(request))
                        await _relay(router, upstream, response, stream, shape, input_tokens)
                    except ClientGone:
                        upstream.close()  # cancels the upstream request
                        if not stream.done:
                            series.client_disconnects.inc()
                        return response
                series.latency.observe(time.monotonic() - started)
                if upstream.status >= 500:
                    series.errors.inc()
                return response
        except asyncio.CancelledError:  # the client left (handler cancellation); the upstream request goes too
            if stream is None or not stream.done:
                series.client_disconnects.inc()
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            series.errors.inc()
            router.mark_unhealthy(pool)
            if response is not None and response.prepared:
                raise  # bytes already went to the client: cannot retry
            log.warning("pool %s (%s) failed (%s), attempt %d", pool, url, type(error).__name__, attempt + 1)
        finally:
            state.outstanding[url] -= 1
            series.in_flight.dec()
            if router.table is not None and pool not in router.table.pools:  # sent before a new table
                router.finished_elsewhere()
    router.metrics.no_pool.inc()
    return _error(503, "the GPU pools for this request size did not answer", "upstream_unavailable")


async def _relay(router: Router, upstream: aiohttp.ClientResponse, response: web.StreamResponse,
                 stream: UsageStream, shape: RequestShape, input_tokens: int) -> None:
    """Pass the upstream's events to the client as they come, counting the request by size as soon
    as its total usage is known (a client may leave right after `data: [DONE]`)."""
    counted = False
    async for chunk in upstream.content.iter_any():
        events = stream.feed(chunk)
        if stream.usage_final and not counted:
            router.record_sizes(stream.sizes(shape, input_tokens))
            counted = True
        if events:
            await _to_client(response.write(events))
            stream.delivered(events)
    rest = stream.finish()
    if not counted:  # an upstream that sent usage only on its last text event, or none
        router.record_sizes(stream.sizes(shape, input_tokens))
    if rest:
        await _to_client(response.write(rest))
        stream.delivered(rest)
    await _to_client(response.write_eof())


async def models(request: web.Request) -> web.Response:
    """/v1/models from the first pool that answers."""
    router: Router = request.app[ROUTER_KEY]
    for pool in router.table.pools if router.table is not None else ():
        if not router.pool_urls(pool):
            continue
        try:
            async with router.session.get(f"{router.pick_url(pool)}/v1/models", timeout=router._timeout) as upstream:
                return web.Response(body=await upstream.read(), status=upstream.status,
                                    content_type=upstream.content_type)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            router.mark_unhealthy(pool)
    return _error(503, "no pool answered /v1/models", "upstream_unavailable")


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: a table is loaded and every size it routes has a pool with a ready endpoint."""
    reason = request.app[ROUTER_KEY].not_ready()
    if reason is not None:
        return web.json_response({"status": "not ready", "reason": reason}, status=503)
    return web.json_response({"status": "ok"})


async def routing(request: web.Request) -> web.Response:
    """What the router serves: the table's version, each pool's endpoints, and the requests in flight per
    pool (also to pools the table no longer routes to, until they finish)."""
    router: Router = request.app[ROUTER_KEY]
    table = router.table
    return web.json_response({
        "version": table.version if table is not None else None,
        "pools": {pool: list(router.pool_urls(pool)) for pool in (table.pools if table is not None else {})},
        "in_flight": router.in_flight(),
        "ready": router.not_ready() is None})


async def metrics(request: web.Request) -> web.Response:
    router: Router = request.app[ROUTER_KEY]
    return web.Response(body=generate_latest(router.metrics.registry), content_type="text/plain")


async def _watch_table(app: web.Application) -> None:
    router: Router = app[ROUTER_KEY]
    while True:
        await asyncio.sleep(app[RELOAD_KEY])
        router.reload_if_changed()
        router.refresh_endpoint_map()


def start_watches(router: Router, loop: asyncio.AbstractEventLoop) -> list:
    """The API watches of a router in a cluster (none for a table file); their news reach the router on
    the event loop."""
    source = router.cluster
    if source is None:
        return []
    api = api_client()

    def on_loop(handler):
        return lambda objects: loop.call_soon_threadsafe(handler, objects)

    watches: list = []
    if source.ack_config_map and source.pod:
        router.acknowledger = Acknowledger(kubernetes.client.CoreV1Api(api), source.namespace, source.ack_config_map,
                                           source.pod)
        watches.append(router.acknowledger)
    watches.append(config_map_watch(api, source.namespace, source.config_map, on_loop(router.on_config_maps)))
    if source.service is not None:
        watches.append(endpoint_slices_watch(api, source.namespace, source.service, on_loop(router.on_endpoint_slices)))
    for watch in watches:
        watch.start()
    return watches


def build_app(router: Router, reload_interval_s: float = 1.0) -> web.Application:
    """The aiohttp application serving the router."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[ROUTER_KEY] = router
    app[RELOAD_KEY] = reload_interval_s
    for path in PROXIED_PATHS:
        app.router.add_post(path, proxy)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/routing", routing)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(app: web.Application):
        # No cookie jar: a proxy must not carry one client's cookies to another's requests.
        router.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                               cookie_jar=aiohttp.DummyCookieJar())
        watcher = asyncio.create_task(_watch_table(app))
        watches = start_watches(router, asyncio.get_running_loop())
        yield
        for watch in watches:
            watch.stop()
        watcher.cancel()
        await router.session.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def serve(router: Router, host: str, port: int) -> None:
    """Serve the router until interrupted, on uvloop where it is installed (it roughly halves the
    event loop's cost per proxied request)."""
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(build_app(router), host=host, port=port, loop=loop, print=None, **SERVER_OPTIONS)


def build_parser() -> OneLineParser:
    """The router's flags (`melange-router`, `python -m melange.operator.router`)."""
    parser = OneLineParser(prog="python -m melange.operator.router",
                           description="Size-aware OpenAI-compatible router for Mélange GPU pools.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", type=Path, help="routing-table file (JSON or YAML), re-read when it changes")
    source.add_argument("--table-configmap", metavar="NAME",
                        help=f"watch this ConfigMap's {TABLE_KEY} through the Kubernetes API (in a cluster)")
    parser.add_argument("--discover-service", metavar="SERVICE",
                        help="balance over the ready endpoints of SERVICE's pools (their EndpointSlices), not the "
                             "table's URLs; needs --table-configmap")
    parser.add_argument("--acknowledge-configmap", metavar="NAME",
                        help="write the table version served under this pod's name (POD_NAME) into this ConfigMap, "
                             "for the operator's switch to a new table; needs --table-configmap")
    parser.add_argument("--namespace", help="the namespace of the ConfigMap and the pools (default: POD_NAMESPACE, "
                                            "else the ServiceAccount's)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument("--model-name", default="", help="model_name label on the router's metrics (default: empty)")
    parser.add_argument("--tokenize", action="store_true",
                        help="count input tokens exactly through the upstream's /tokenize (vLLM) instead of estimating")
    return parser


def main() -> None:
    """Run the router until interrupted; a bad table or flag at start is one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (args.discover_service or args.acknowledge_configmap) and not args.table_configmap:
        parser.error("--discover-service and --acknowledge-configmap need --table-configmap")
    cluster = None
    if args.table_configmap:
        namespace = args.namespace or own_namespace()
        if not namespace:
            parser.error("--namespace not given, POD_NAMESPACE not set and no ServiceAccount namespace file")
        pod = os.environ.get("POD_NAME")
        if args.acknowledge_configmap and not pod:
            parser.error("--acknowledge-configmap needs POD_NAME (the downward API's metadata.name)")
        cluster = ClusterSource(namespace, args.table_configmap, args.discover_service, args.acknowledge_configmap,
                                pod)
    raise SystemExit(run_reporting_errors(
        parser.prog, lambda: serve(Router(args.table, args.model_name, tokenize=args.tokenize, cluster=cluster),
                                   args.host, args.port)))


if __name__ == "__main__":
    main()
