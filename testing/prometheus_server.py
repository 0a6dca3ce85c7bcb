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
    `scrape_interval_s`), scraping `targets` (host:port); stops it by PID."""

    def __init__(self, targets: Sequence[str], binary: str | None = None, scrape_interval_s: float = 1.0) -> None:
        self.binary = binary or shutil.which("prometheus")
        if self.binary is None:
            raise RuntimeError("the prometheus binary is not installed (Debian package `prometheus`; .ci/run installs it)")
        self.folder = Path(tempfile.mkdtemp(prefix="melange-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.folder / "prometheus.yml"
        jobs = "\n".join(f"  - job_name: target{k}\n    static_configs:\n      - targets: ['{t}']"
                         for k, t in enumerate(targets))
        config.write_text(f"global:\n  scrape_interval: {scrape_interval_s:g}s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}\n")
        self.log = open(self.folder / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.targets = list(targets)

    def wait_until_scraping(self, timeout_s: float = 30.0) -> None:
        """Wait for every target's `up == 1` (readiness comes seconds before the first scrape)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.folder / 'prometheus.log').read_text()[-2000:]}")
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
