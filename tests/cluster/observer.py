"""Watches one namespace of the real cluster (Deployments, ConfigMaps, LLMServices) through the API
server's watch, and after every event calls a check with the latest state: every state the
controllers and the operator produce is seen, in the order the server sent it."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes
from kubernetes import watch


@dataclass
class State:
    """The latest object of each kind, by name."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)


class Observer:
    """Three watches feeding one State; `check(state)` runs after every event, under a lock."""

    def __init__(self, kubeconfig: str, namespace: str, check: Callable[[State], None]) -> None:
        self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.namespace, self.check = namespace, check
        self.state = State()
        self.lock = threading.Lock()
        self.events = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _follow(self, table: dict[str, dict[str, Any]], lister: Callable[..., Any], *args: Any) -> None:
        while not self._stop.is_set():
            watcher = watch.Watch()
            try:
                for event in watcher.stream(lister, *args, timeout_seconds=5, _request_timeout=10):
                    obj = event["object"]
                    if not isinstance(obj, dict):
                        obj = self.api.sanitize_for_serialization(obj)
                    with self.lock:
                        if event["type"] == "DELETED":
                            table.pop(obj["metadata"]["name"], None)
                        else:
                            table[obj["metadata"]["name"]] = obj
                        self.events += 1
                        self.check(self.state)
                    if self._stop.is_set():
                        break
            except Exception as error:  # noqa: BLE001 (a broken watch is reported by the test)
                if not self._stop.is_set():
                    self.errors.append(repr(error))
            finally:
                watcher.stop()

    def start(self) -> Observer:
        apps = kubernetes.client.AppsV1Api(self.api)
        core = kubernetes.client.CoreV1Api(self.api)
        custom = kubernetes.client.CustomObjectsApi(self.api)
        targets = [(self.state.deployments, apps.list_namespaced_deployment, self.namespace),
                   (self.state.config_maps, core.list_namespaced_config_map, self.namespace),
                   (self.state.services, custom.list_namespaced_custom_object, "melange.ai", "v1alpha1",
                    self.namespace, "llmservices")]
        for table, lister, *args in targets:
            thread = threading.Thread(target=self._follow, args=(table, lister, *args), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
