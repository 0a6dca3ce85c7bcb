"""The size-aware router: an OpenAI-compatible proxy that sends each request to a GPU pool by the
routing table's weights for its size bucket, so the solver's heterogeneous allocation holds.

    python -m melange.operator.router --table /etc/melange/routing.json --port 8080 --model-name NAME
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
from aiohttp import web
from yarl import URL
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from melange.operator.router.request_size import estimate_input_tokens, requested_output_tokens, tokenize_request
from melange.operator.router.routing_config import RoutingTable, load_table
from melange.operator.router.usage import RequestShape, UsageStream, request_shape, sizes_of_answer, usage_request
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
        self._pool_series: dict[str, PoolSeries] = {}

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


class Router:
    """Holds the current table, picks pools, proxies requests."""

    def __init__(self, table_path: Path, model_name: str = "", upstream_timeout_s: float = 600.0,
                 connect_timeout_s: float = 2.0, seed: int | None = None, tokenize: bool = False) -> None:
        self.table_path = Path(table_path)
        self.model_name = model_name
        self.tokenize = tokenize
        self.table: RoutingTable = load_table(self.table_path)
        self._signature = self._file_signature()
        self.pools: dict[str, PoolState] = {}
        self.metrics = RouterMetrics(CollectorRegistry())
        self._rng = random.Random(seed)
        self._timeout = aiohttp.ClientTimeout(total=upstream_timeout_s, sock_connect=connect_timeout_s)
        self._tokenize_timeout = aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_S, sock_connect=connect_timeout_s)
        self.session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], URL] = {}

    def _file_signature(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self.table_path)  # follows the ConfigMap's symlink swap
        except OSError:
            return None
        return stat.st_mtime, stat.st_size

    def reload_if_changed(self) -> None:
        """Swap in a changed table; a bad file is logged and the last good table stays."""
        signature = self._file_signature()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self.table = load_table(self.table_path)
        except InputError as error:
            self.metrics.reloads.labels("rejected").inc()
            log.error("routing table rejected, keeping the last good one: %s", error)
            return
        self.metrics.reloads.labels("ok").inc()
        log.info("routing table reloaded from %s", self.table_path)

    def candidates(self, input_tokens: int, output_tokens: int | None) -> list[str]:
        """Pools to try, in order: one drawn by the bucket's weights, then the others that serve it."""
        table = self.table
        i = table.grid.input_bucket(input_tokens)
        if i is None:
            i = table.grid.shape[0] - 1  # longer than the grid: the pools of the longest bucket
        j = table.grid.output_bucket(output_tokens) if output_tokens is not None else None
        weights = {p: w for p, w in table.weights(i, j).items() if w > 0}
        now = time.monotonic()
        healthy = {p: w for p, w in weights.items() if self.pools.get(p, PoolState()).unhealthy_until <= now}
        pool_weights = healthy or weights
        if not pool_weights:
            return []
        names = list(pool_weights)
        first = self._rng.choices(names, weights=[pool_weights[n] for n in names])[0]
        return [first] + sorted((n for n in names if n != first), key=lambda n: -pool_weights[n])

    def pick_url(self, pool: str) -> str:
        """The pool's upstream with the fewest outstanding requests."""
        state = self.pools.setdefault(pool, PoolState())
        urls = self.table.pools[pool]
        return min(urls, key=lambda u: state.outstanding.get(u, 0))

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
            for pool in self.table.pools:
                if self.pools.get(pool, PoolState()).unhealthy_until > now:
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
            self.metrics.joint.labels(self.model_name, _size_cell(input_tokens), _size_cell(output_tokens)).inc()


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
    for pool in router.table.pools:
        try:
            async with router.session.get(f"{router.pick_url(pool)}/v1/models", timeout=router._timeout) as upstream:
                return web.Response(body=await upstream.read(), status=upstream.status,
                                    content_type=upstream.content_type)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            router.mark_unhealthy(pool)
    return _error(503, "no pool answered /v1/models", "upstream_unavailable")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    router: Router = request.app[ROUTER_KEY]
    return web.Response(body=generate_latest(router.metrics.registry), content_type="text/plain")


async def _watch_table(app: web.Application) -> None:
    router: Router = app[ROUTER_KEY]
    while True:
        await asyncio.sleep(app[RELOAD_KEY])
        router.reload_if_changed()


def build_app(router: Router, reload_interval_s: float = 1.0) -> web.Application:
    """The aiohttp application serving the router."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[ROUTER_KEY] = router
    app[RELOAD_KEY] = reload_interval_s
    for path in PROXIED_PATHS:
        app.router.add_post(path, proxy)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", health)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(app: web.Application):
        # No cookie jar: a proxy must not carry one client's cookies to another's requests.
        router.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                               cookie_jar=aiohttp.DummyCookieJar())
        watcher = asyncio.create_task(_watch_table(app))
        yield
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


def main() -> None:
    """Run the router until interrupted; a bad table or flag at start is one line and exit 2."""
    parser = OneLineParser(prog="python -m melange.operator.router",
                           description="Size-aware OpenAI-compatible router for Mélange GPU pools.")
    parser.add_argument("--table", type=Path, required=True, help="routing-table file (JSON or YAML)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument("--model-name", default="", help="model_name label on the router's metrics (default: empty)")
    parser.add_argument("--tokenize", action="store_true",
                        help="count input tokens exactly through the upstream's /tokenize (vLLM) instead of estimating")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(run_reporting_errors(
        parser.prog, lambda: serve(Router(args.table, args.model_name, tokenize=args.tokenize), args.host, args.port)))


if __name__ == "__main__":
    main()
