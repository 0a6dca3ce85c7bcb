"""The test Prometheus starts again on another port when its free port was taken before it bound it."""
from __future__ import annotations

import socket

import pytest
import requests

from melange.testing import prometheus_server
from melange.testing.ports import free_port

pytestmark = pytest.mark.integration


def test_a_port_taken_before_prometheus_binds_it_is_replaced(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        monkeypatch.setattr(prometheus_server, "free_port", lambda: next(ports, None) or free_port())
        server = prometheus_server.PrometheusServer([])
        try:
            assert server.port == busy
            server.wait_until_scraping()
            assert server.port != busy
            assert requests.get(f"{server.url}/-/ready", timeout=5).status_code == 200
        finally:
            server.stop()
