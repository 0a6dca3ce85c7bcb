"""What the router learns from the Kubernetes API: each pool's ready endpoints (the EndpointSlices
of the pools' Services) and the routing table (its ConfigMap), both through watches, so a new
ready pod gets traffic and a new table is served within a second of the API server knowing.

EndpointSlices carry their Service's labels (the EndpointSlice controller copies them,
k8s.io/endpointslice utils.go `setEndpointSliceLabels`), so one label selector finds the slices of
every pool of a service, and `melange.ai/option` names the pool. An endpoint takes new requests
only while its `ready` condition is true: a terminating pod's endpoint is not ready (it may still
be `serving` its requests in flight), per the EndpointSlice API's conditions.

The watches run in threads with the official client (its in-cluster token refresh and kubeconfig
handling) and hand each new state to the event loop.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from melange.solver.routing import IN_FLIGHT_SUFFIX

log = logging.getLogger("melange.router")

SERVICE_LABEL = "melange.ai/service"
OPTION_LABEL = "melange.ai/option"
POOL_PORT_NAME = "http"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WATCH_TIMEOUT_S = 300  # the API server ends a watch after this; it is resumed from the last version
RETRY_S = (0.5, 1.0, 2.0, 5.0)
# Test hook: a JSON file {"<address>:<port>": "http://host:port"} that stands in for endpoints a test
# cannot reach (KWOK pods have no network); discovery and balancing run unchanged.
ENDPOINT_MAP_ENV = "MELANGE_ROUTER_ENDPOINT_MAP"


def pool_selector(service: str) -> str:
    """The label selector of the EndpointSlices of a service's pools."""
    return f"{SERVICE_LABEL}={service},app.kubernetes.io/component=pool"


def ready_endpoints(slices: Sequence[Mapping[str, Any]], endpoint_map: Mapping[str, str] | None = None
                    ) -> dict[str, tuple[str, ...]]:
    """Pool -> the base URLs of its ready endpoints (sorted, each once), from EndpointSlices.
    `endpoint_map` replaces `address:port` by another URL (the test hook)."""
    found: dict[str, set[str]] = {}
    for piece in slices:
        pool = ((piece.get("metadata") or {}).get("labels") or {}).get(OPTION_LABEL)
        if not pool:
            continue
        urls = found.setdefault(pool, set())
        port = next((p.get("port") for p in piece.get("ports") or [] if p.get("name") == POOL_PORT_NAME), None)
        if port is None:
            continue
        for endpoint in piece.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is not True:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                key = f"{host}:{port}"
                urls.add((endpoint_map or {}).get(key) or f"http://{key}")
    return {pool: tuple(sorted(urls)) for pool, urls in sorted(found.items())}


def read_endpoint_map() -> dict[str, str] | None:
    """The test hook's map, when its environment variable names a readable file."""
    path = os.environ.get(ENDPOINT_MAP_ENV)
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v).rstrip("/") for k, v in data.items()} if isinstance(data, dict) else {}


def own_namespace() -> str | None:
    """The namespace the router runs in: POD_NAMESPACE (downward API), else its ServiceAccount's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def api_client() -> kubernetes.client.ApiClient:
    """A client from the in-cluster ServiceAccount, else from KUBECONFIG."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


class Watch(threading.Thread):
    """Keeps the objects of one list call current (list, then watch from its version; relist when the
    version is gone; retry with backoff on errors) and calls `publish` with all of them after each change."""

    def __init__(self, name: str, api: kubernetes.client.ApiClient, list_call: Callable[..., Any],
                 publish: Callable[[list[dict[str, Any]]], None], **selectors: Any) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self.api, self.list_call, self.publish, self.selectors = api, list_call, publish, selectors
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            try:
                self._list_and_watch()
                failures = 0
            except ApiException as error:
                if error.status != 410:  # 410: the version is too old; relist at once
                    log.warning("%s: %s %s", self.name, error.status, error.reason)
                    failures += 1
            except Exception as error:  # dropped connection, timeout: the same, after a pause
                log.warning("%s: %s", self.name, error)
                failures += 1
            if failures:
                self.stopped.wait(RETRY_S[min(failures, len(RETRY_S)) - 1])

    def _list_and_watch(self) -> None:
        answer = self.list_call(_request_timeout=(5, 30), **self.selectors)
        api = self.api
        objects = {o.metadata.name: api.sanitize_for_serialization(o) for o in answer.items}
        self.publish(list(objects.values()))
        version = answer.metadata.resource_version
        watch = kubernetes.watch.Watch()
        for event in watch.stream(self.list_call, resource_version=version, timeout_seconds=WATCH_TIMEOUT_S,
                                  allow_watch_bookmarks=True, _request_timeout=(5, WATCH_TIMEOUT_S + 30),
                                  **self.selectors):
            if self.stopped.is_set():
                watch.stop()
                return
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                raw = event.get("raw_object") or {}
                raise ApiException(status=raw.get("code", 500), reason=raw.get("message", "watch error"))
            if kind == "BOOKMARK":
                continue
            data = api.sanitize_for_serialization(obj)
            name = data["metadata"]["name"]
            if kind == "DELETED":
                objects.pop(name, None)
            else:
                objects[name] = data
            self.publish(list(objects.values()))


def endpoint_slices_watch(api: kubernetes.client.ApiClient, namespace: str, service: str,
                          publish: Callable[[list[dict[str, Any]]], None]) -> Watch:
    """A watch of the EndpointSlices of a service's pools."""
    discovery = kubernetes.client.DiscoveryV1Api(api)
    return Watch("endpointslices", api, discovery.list_namespaced_endpoint_slice, publish, namespace=namespace,
                 label_selector=pool_selector(service))


def config_map_watch(api: kubernetes.client.ApiClient, namespace: str, name: str,
                     publish: Callable[[list[dict[str, Any]]], None]) -> Watch:
    """A watch of one ConfigMap (by name: RBAC can then grant the router just this one)."""
    core = kubernetes.client.CoreV1Api(api)
    return Watch("routing", api, core.list_namespaced_config_map, publish, namespace=namespace,
                 field_selector=f"metadata.name={name}")


REPORT_INTERVAL_S = 1.0  # in-flight counts are written at most this often (a new table's acknowledgement at once)


class Acknowledger(threading.Thread):
    """Writes the table version this router pod serves into the acknowledgement ConfigMap (its own key,
    the pod's name), so the operator knows when every router serves a new table, and beside it
    (`<pod>.in-flight`, IN_FLIGHT_SUFFIX) its requests still in flight to pools that table no longer
    routes to, so the operator's drain knows when the old pools are idle. Both go in one patch with
    each acknowledgement; afterwards only a change of the counts is written, at most once per
    REPORT_INTERVAL_S (the router reports only while such requests finish, the last report being
    none left). The latest state wins, failed writes are retried. `core`: a CoreV1Api (or a stand-in)."""

    def __init__(self, core: Any, namespace: str, config_map: str, pod: str,
                 report_interval_s: float = REPORT_INTERVAL_S) -> None:
        super().__init__(name="acknowledge", daemon=True)
        self.core = core
        self.namespace, self.config_map, self.pod = namespace, config_map, pod
        self.report_interval_s = report_interval_s
        self.wanted: str | None = None
        self.written: str | None = None
        self.wanted_counts: dict[str, int] = {}
        self.written_counts: dict[str, int] | None = None
        self.counts_written_at = float("-inf")  # monotonic time of the last write
        self.changed = threading.Condition()
        self.stopped = False

    def acknowledge(self, version: str, in_flight: Mapping[str, int] | None = None) -> None:
        """Serving table `version`, with these requests in flight to pools it does not route to."""
        with self.changed:
            self.wanted = version
            if in_flight is not None:
                self.wanted_counts = dict(in_flight)
            self.changed.notify()

    def report(self, in_flight: Mapping[str, int]) -> None:
        """The requests now in flight to pools the table served does not route to."""
        with self.changed:
            if dict(in_flight) != self.wanted_counts:
                self.wanted_counts = dict(in_flight)
                self.changed.notify()

    def _due(self) -> float | None:
        """With the lock held: 0 when a write is due now, the seconds to wait for one that the rate limit
        holds back, None when nothing is to be written."""
        if self.wanted is None:
            return None
        if self.wanted != self.written:
            return 0.0
        if self.wanted_counts == self.written_counts:
            return None
        return max(0.0, self.counts_written_at + self.report_interval_s - time.monotonic())

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify()

    def run(self) -> None:
        failures = 0
        while True:
            with self.changed:
                while not self.stopped and (wait := self._due()) != 0.0:
                    self.changed.wait(wait)
                if self.stopped:
                    return
                version, counts = self.wanted, dict(self.wanted_counts)
            report = json.dumps({"version": version, "pools": counts}, sort_keys=True, separators=(",", ":"))
            try:
                self.core.patch_namespaced_config_map(
                    self.config_map, self.namespace, {"data": {self.pod: version, self.pod + IN_FLIGHT_SUFFIX: report}},
                    _request_timeout=(5, 30))
                with self.changed:
                    self.written, self.written_counts = version, counts
                    self.counts_written_at = time.monotonic()
                failures = 0
            except Exception as error:  # the ConfigMap not there yet, a dropped connection: try again
                log.warning("acknowledging routing table %s: %s", version, error)
                failures += 1
                time.sleep(RETRY_S[min(failures, len(RETRY_S)) - 1])

