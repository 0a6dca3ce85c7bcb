"""The real `melange-operator` command as a separate process, for the real-cluster tests: outside
the cluster (KWOK pods run nothing), with the arguments the Helm chart gives its container and the
kubeconfig of the chart's ServiceAccount, so every call it makes is authorized by the chart's RBAC."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from melange.testing.cluster import die_with_parent
from melange.testing.ports import free_port, wait_for_http_ok


def local_arguments(container_args: Sequence[str]) -> tuple[list[str], int]:
    """The chart container's arguments made runnable here: the health and metrics endpoints on free
    loopback ports, the mounted-file flags (token, CA) left out. Returns (arguments, health port)."""
    health = free_port()
    args = []
    for arg in container_args:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{health}/healthz"
        elif arg.startswith("--metrics-port="):
            arg = f"--metrics-port={free_port()}"
        elif arg.startswith(("--prometheus-token-file=", "--prometheus-ca-file=")):
            continue
        args.append(arg)
    return args, health


class OperatorProcess:
    """`melange-operator ARGS` with KUBECONFIG set; its output goes to `log_path`."""

    def __init__(self, args: Sequence[str], kubeconfig: Path, log_path: Path, health_port: int) -> None:
        self.args, self.kubeconfig, self.log_path, self.health_port = list(args), kubeconfig, log_path, health_port
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 60.0) -> OperatorProcess:
        """Start it and wait for kopf's health endpoint (it answers once the operator is ready)."""
        command = Path(sys.executable).with_name("melange-operator")
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([str(command), *self.args], stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.log_path.parent, preexec_fn=die_with_parent)

        def alive() -> None:
            if self.process.poll() is not None:
                raise RuntimeError(f"melange-operator exited with {self.process.returncode}:\n{self.log_tail()}")
        if wait_for_http_ok(f"http://127.0.0.1:{self.health_port}/healthz", timeout_s, alive):
            return self
        raise RuntimeError(f"melange-operator not healthy after {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (as the kubelet stops a pod), then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 60) -> str:
        """The last lines it wrote."""
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
