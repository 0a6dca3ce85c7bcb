"""Watches one namespace of the real cluster (Deployments, ConfigMaps, LLMServices) through the API
server's watch, and calls a check with the state after every write, in the order the server made
the writes: every state the controllers and the operator produce is seen.

Three watches deliver their events on three connections, so one kind's event may arrive before an
earlier write of another kind. Events are therefore held for a short while and replayed in the
order of their resourceVersion, which on an etcd-backed server is etcd's global revision (an
integer; clients may not rely on that in general, this test ground may: it runs its own etcd).
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes
from kubernetes import watch

HOLD_S = 2.0  # how long an event waits for earlier writes of other kinds to arrive (a loaded CI machine)


@dataclass
class State:
    """The latest object of each kind, by name."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)


class Observer:
    """Three watches feeding one State; `check(state)` runs after every write, in write order."""

    def __init__(self, kubeconfig: str, namespace: str, check: Callable[[State], None]) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.namespace, self.check = namespace, check
        self.state = State()
        self.events = 0
        self.errors: list[str] = []
        self._pending: list[tuple[int, int, float, dict, str, dict]] = []  # (revision, seq, arrival, table, type, obj)
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _plain(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)

    def _list(self, table: dict[str, dict[str, Any]], lister: Callable[..., Any], *args: Any) -> str:
        """Fill `table` from a list; its resourceVersion, where the watch goes on from."""
        answer = self._plain(lister(*args))
        table.clear()
        for obj in answer.get("items") or []:
            table[obj["metadata"]["name"]] = obj
        return answer["metadata"]["resourceVersion"]

    def _follow(self, table: dict[str, dict[str, Any]], version: str, lister: Callable[..., Any], *args: Any) -> None:
        while not self._stop.is_set():
            watcher = watch.Watch()
            try:
                for event in watcher.stream(lister, *args, resource_version=version, timeout_seconds=5,
                                            _request_timeout=10):
                    obj = self._plain(event["object"])
                    version = obj["metadata"]["resourceVersion"]
                    with self._lock:
                        heapq.heappush(self._pending, (int(version), next(self._order), time.monotonic(),
                                                       table, event["type"], obj))
                    if self._stop.is_set():
                        break
            except kubernetes.client.ApiException as error:
                if error.status != 410 and not self._stop.is_set():
                    self.errors.append(repr(error))
                elif error.status == 410:
                    self.errors.append("a watch fell out of the server's window; states were missed")
            except Exception as error:  # noqa: BLE001 (a broken watch is reported by the test)
                if not self._stop.is_set():
                    self.errors.append(repr(error))
            finally:
                watcher.stop()

    def _replay(self, everything: bool = False) -> None:
        """Apply held events older than HOLD_S (all, when `everything`) in revision order, checking after each."""
        with self._lock:
            while self._pending and (everything or time.monotonic() - self._pending[0][2] > HOLD_S):
                _, _, _, table, kind, obj = heapq.heappop(self._pending)
                if kind == "DELETED":
                    table.pop(obj["metadata"]["name"], None)
                else:
                    table[obj["metadata"]["name"]] = obj
                self.events += 1
                self.check(self.state)

    def _run_replay(self) -> None:
        while not self._stop.is_set():
            self._replay()
            time.sleep(0.05)

    def start(self) -> Observer:
        """List the three kinds (one consistent start), check once, then watch each from its list."""
        apps = kubernetes.client.AppsV1Api(self.api)
        core = kubernetes.client.CoreV1Api(self.api)
        custom = kubernetes.client.CustomObjectsApi(self.api)
        targets = [(self.state.deployments, apps.list_namespaced_deployment, self.namespace),
                   (self.state.config_maps, core.list_namespaced_config_map, self.namespace),
                   (self.state.services, custom.list_namespaced_custom_object, "melange.ai", "v1alpha1",
                    self.namespace, "llmservices")]
        versions = [self._list(table, lister, *args) for table, lister, *args in targets]
        self.check(self.state)
        for (table, lister, *args), version in zip(targets, versions):
            thread = threading.Thread(target=self._follow, args=(table, version, lister, *args), daemon=True)
            thread.start()
            self._threads.append(thread)
        replay = threading.Thread(target=self._run_replay, daemon=True)
        replay.start()
        self._threads.append(replay)
        return self

    def stop(self) -> None:
        """Stop watching; every event received is checked before this returns."""
        time.sleep(HOLD_S)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self._replay(everything=True)
