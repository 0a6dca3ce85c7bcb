"""An in-process stand-in for Prometheus's HTTP query API, for fast tests of the code that queries it.

It answers `GET /api/v1/query?query=...` as Prometheus does (`{"status": "success", "data":
{"resultType": ..., "result": [...]}}`, docs: prometheus.io/docs/prometheus/latest/querying/api/)
with results canned per query string; a query it has no answer for gets an empty vector, as a
selector that matches nothing would. It records every attempt (path, query, headers), so a test
can assert the exact PromQL sent and count retries. Answers can also be an HTTP error, a body that
is not JSON, or a hold (no answer until the test ends: a Prometheus that is too slow).
"""
from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

QUERY_PATH = "/api/v1/query"


@dataclass(frozen=True)
class Failure:
    """An HTTP error answer: `status` with `body` (Prometheus's error JSON by default)."""

    status: int
    body: str = '{"status":"error","errorType":"bad_data","error":"parse error"}'


@dataclass(frozen=True)
class Garbled:
    """A 200 answer whose body is not JSON (a proxy's HTML page, say)."""

    body: str = "<html>not prometheus</html>"


HOLD = object()  # no answer until the stand-in closes (or HOLD_LIMIT_S pass: then an empty one)
HOLD_LIMIT_S = 10.0


def sample(value: float | str, time: float = 1000.0, **labels: str) -> dict[str, Any]:
    """One instant-vector sample as Prometheus encodes it (the value as a string: "NaN", "+Inf")."""
    return {"metric": dict(labels), "value": [time, value if isinstance(value, str) else repr(float(value))]}


def series(times: list[float], **labels: str) -> dict[str, Any]:
    """One range-vector series with samples at `times` (values are not read by the code under test)."""
    return {"metric": dict(labels), "values": [[t, str(k)] for k, t in enumerate(times)]}


@dataclass(frozen=True)
class Received:
    """One request as the stand-in received it."""

    path: str
    query: str | None
    headers: Mapping[str, str]


class PrometheusStandIn:
    """Serves canned answers on 127.0.0.1 (a port the OS picks); use as a context manager.

    `answers` maps a PromQL string to a result list (a "matrix" when its series carry `values`),
    a Failure, a Garbled or HOLD. With `tls` (a certificate file and its key file) it serves HTTPS."""

    def __init__(self, answers: Mapping[str, Any] | None = None, tls: tuple[str, str] | None = None) -> None:
        self.answers: dict[str, Any] = dict(answers or {})
        self.received: list[Received] = []
        self._release = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                stand_in._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def queries(self) -> list[str | None]:
        """The PromQL of every request received, in order (retries included)."""
        return [r.query for r in self.received]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, parameters = handler.path.partition("?")  # not urlsplit: it reads "//x" as a host
        query = parse_qs(parameters).get("query", [None])[0]
        self.received.append(Received(path, query, dict(handler.headers.items())))
        if path != QUERY_PATH:
            return self._send(handler, 404, "404 page not found", "text/plain")
        answer = self.answers.get(query, [])
        if answer is HOLD:
            # A client without a timeout would wait here for good; after the limit it gets an
            # ordinary empty answer, which a test expecting a timeout then rejects.
            self._release.wait(HOLD_LIMIT_S)
            answer = []
        if isinstance(answer, Failure):
            return self._send(handler, answer.status, answer.body, "application/json")
        if isinstance(answer, Garbled):
            return self._send(handler, 200, answer.body, "text/html")
        kind = "matrix" if any("values" in item for item in answer) else "vector"
        body = json.dumps({"status": "success", "data": {"resultType": kind, "result": answer}})
        return self._send(handler, 200, body, "application/json")

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up (a timeout) before the answer
            pass

    def close(self) -> None:
        """Release held requests and stop serving."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> PrometheusStandIn:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
