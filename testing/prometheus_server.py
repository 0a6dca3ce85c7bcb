"""A real Prometheus server (Debian's `prometheus` binary) on 127.0.0.1, for tests and the demo."""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from melange.testing.ports import free_port


class PrometheusServer:
    """Starts Prometheus with a temporary config and data folder, a 1 s scrape interval (or
    `scrape_interval_s`), scraping `targets` (host:port); stops it by PID. `port` None takes a free
    one; give the port of a stopped server to play that server coming back."""

    def __init__(self, targets: Sequence[str], binary: str | None = None, port: int | None = None,
                 scrape_interval_s: float = 1.0) -> None:
        self.binary = binary or shutil.which("prometheus")
        if self.binary is None:
            raise RuntimeError("the prometheus binary is not installed (Debian package `prometheus`; .ci/run installs it)")
        self.folder = Path(tempfile.mkdtemp(prefix="melange-prometheus-"))
        self.config = self.folder / "prometheus.yml"
        jobs = "\n".join(f"  - job_name: target{k}\n    static_configs:\n      - targets: ['{t}']"
                         for k, t in enumerate(targets))
        self.config.write_text(f"global:\n  scrape_interval: {scrape_interval_s:g}s\n  evaluation_interval: 1s\n"
                               f"scrape_configs:\n{jobs}\n")
        self.log = open(self.folder / "prometheus.log", "wb")
        self.targets = list(targets)
        self._port = port
        self._start()

    def _start(self) -> None:
        # Prometheus cannot report a port the OS picked, so it gets a free one; another process may
        # take that port first, and then wait_until_scraping starts it again on another.
        self.port = self._port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_start = (self.folder / "prometheus.log").stat().st_size
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_until_scraping(self, timeout_s: float = 30.0) -> None:
        """Wait for every target's `up == 1` (readiness comes seconds before the first scrape)."""
        deadline = time.monotonic() + timeout_s
        restarts = 3
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.folder / "prometheus.log").read_bytes()[self._log_start:].decode(errors="replace")
                if "address already in use" in log and restarts > 0:
                    restarts -= 1
                    self._start()
                    continue
                raise RuntimeError(f"prometheus exited: {log[-2000:]}")
            try:
                answer = requests.get(f"{self.url}/api/v1/query", params={"query": "up == 1"}, timeout=2).json()
                if len(answer["data"]["result"]) == len(self.targets):
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"prometheus did not scrape {self.targets} within {timeout_s}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
