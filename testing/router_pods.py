"""Runs the real router for each ready router pod of a local cluster, as a kubelet would run its
container: KWOK makes pods Ready without running anything, and the operator's switch to a new
routing table waits for every ready router pod to acknowledge it.

Each process gets the container's own command line (its port moved to a free one on 127.0.0.1), the
pod's name and namespace (the downward API's env), and a kubeconfig with a token of the pod's
ServiceAccount, so its calls meet the Role the operator gave it. Pod addresses resolve through the
endpoint map file (`MELANGE_ROUTER_ENDPOINT_MAP`), shared by all routers: KWOK pods have no network.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from melange.testing.cluster import LocalCluster
from melange.testing.ports import free_port

POLL_S = 0.5
SELECTOR = "app.kubernetes.io/component=router,app.kubernetes.io/managed-by=melange-operator"


@dataclass
class RunningRouter:
    """One router process and where it answers."""

    namespace: str
    pod: str
    url: str
    process: subprocess.Popen
    log: Path


class RouterPods:
    """Keeps one router process per ready router pod (started when the pod is ready, stopped when it goes)."""

    def __init__(self, cluster: LocalCluster, folder: Path) -> None:
        self.cluster, self.folder = cluster, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.endpoint_map = folder / "endpoints.json"
        self.endpoint_map.write_text("{}")
        self.running: dict[tuple[str, str], RunningRouter] = {}
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="router-pods", daemon=True)

    def start(self) -> RouterPods:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)
        with self._lock:
            for router in self.running.values():
                _end(router.process)
            self.running.clear()

    def map_endpoints(self, mapping: dict[str, str]) -> None:
        """Add `address:port` -> URL entries to the shared endpoint map (routers re-read it each second)."""
        with self._lock:
            current = json.loads(self.endpoint_map.read_text())
            current.update(mapping)
            temporary = self.endpoint_map.with_suffix(".tmp")
            temporary.write_text(json.dumps(current))
            temporary.replace(self.endpoint_map)

    def router(self, namespace: str, pod: str) -> RunningRouter | None:
        with self._lock:
            return self.running.get((namespace, pod))

    def of_service(self, namespace: str, service: str) -> list[RunningRouter]:
        """The running routers of a service's router pods."""
        with self._lock:
            return [r for (ns, pod), r in sorted(self.running.items())
                    if ns == namespace and pod.startswith(f"{service}-router-")]

    def _loop(self) -> None:
        while not self._stopped.wait(POLL_S):
            try:
                self._sync()
            except Exception as error:  # the API server restarting, a namespace going: next round
                self.failures.append(str(error))

    def _sync(self) -> None:
        listed = self.cluster.kubectl("get", "pods", "-A", "-l", SELECTOR, "-o", "json", check=False)
        if listed.returncode != 0:
            return
        ready = {}
        for pod in json.loads(listed.stdout)["items"]:
            meta = pod["metadata"]
            conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
            if not meta.get("deletionTimestamp") and conditions.get("Ready") == "True":
                ready[(meta["namespace"], meta["name"])] = pod
        with self._lock:
            for key in [k for k in self.running if k not in ready]:
                _end(self.running.pop(key).process)
            for key, router in list(self.running.items()):
                if router.process.poll() is not None:  # exited: as a kubelet would, run it again
                    self.running.pop(key)
        for key, pod in ready.items():
            if self.router(*key) is None:
                started = self._run(pod)
                with self._lock:
                    self.running[key] = started

    def _run(self, pod: dict) -> RunningRouter:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        args = list(container["args"])
        port = free_port()
        args[args.index("--port") + 1] = str(port)
        args += ["--host", "127.0.0.1"]
        kubeconfig = self.cluster.service_account_kubeconfig(namespace, pod["spec"]["serviceAccountName"],
                                                             self.folder / f"{namespace}-{name}.kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": namespace, "POD_NAME": name,
               "MELANGE_ROUTER_ENDPOINT_MAP": str(self.endpoint_map)}
        log = self.folder / f"{namespace}-{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", "melange.operator.router", *args], env=env,
                                       stdout=out, stderr=subprocess.STDOUT)
        return RunningRouter(namespace, name, f"http://127.0.0.1:{port}", process, log)


def _end(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
