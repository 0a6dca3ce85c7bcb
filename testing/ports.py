"""Loopback ports: find a free one, wait until something listens or answers."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable

import requests


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until a TCP connection to host:port succeeds; RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s:g} s") from None
            time.sleep(0.05)


def wait_for_http_ok(url: str, timeout_s: float, check_alive: Callable[[], None] = lambda: None) -> bool:
    """Poll `url` until it answers 200 (True) or `timeout_s` passes (False); `check_alive` runs before
    each try, to raise when the process that should answer has died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive()
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False
