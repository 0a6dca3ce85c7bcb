"""The router's acknowledger: the table version it serves and its requests in flight to pools that table
dropped go into the acknowledgement ConfigMap in one patch; later counts only on change, at most once per
interval, the latest winning (no write storm while a drain's requests finish)."""
from __future__ import annotations

import json
import threading
import time

from melange.operator.router.discovery import Acknowledger


class Core:
    """A stand-in for CoreV1Api that records each patch and when it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict]] = []
        self.lock = threading.Lock()

    def patch_namespaced_config_map(self, name, namespace, body, _request_timeout=None):
        assert (name, namespace) == ("chat-router-acks", "ns")
        with self.lock:
            self.calls.append((time.monotonic(), body["data"]))

    def wait(self, count: int, timeout_s: float = 5.0) -> list[tuple[float, dict]]:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} writes, expected {count}: {self.calls}"
            time.sleep(0.01)
        return list(self.calls)


def pools(data: dict) -> dict:
    return json.loads(data["router-0.in-flight"])["pools"]


def test_counts_are_written_with_each_acknowledgement_then_only_on_change_at_most_once_per_interval():
    core = Core()
    ack = Acknowledger(core, "ns", "chat-router-acks", "router-0", report_interval_s=0.5)
    ack.start()
    try:
        ack.acknowledge("v1", {})
        (_, first), = core.wait(1)
        assert first == {"router-0": "v1", "router-0.in-flight": '{"pools":{},"version":"v1"}'}
        ack.acknowledge("v2", {"a100": 3})  # a new table is acknowledged at once, whatever the interval
        calls = core.wait(2)
        assert calls[1][1]["router-0"] == "v2" and pools(calls[1][1]) == {"a100": 3}
        assert calls[1][0] - calls[0][0] < 0.4
        for left in ({"a100": 2}, {"a100": 1}, {}):  # three requests finish within the interval
            ack.report(left)
        calls = core.wait(3)
        time.sleep(0.8)
        assert len(core.calls) == 3  # the three reports became one write, the latest
        assert pools(calls[2][1]) == {} and calls[2][1]["router-0"] == "v2"
        assert calls[2][0] - calls[1][0] >= 0.5
        ack.report({})  # no change: no write
        time.sleep(0.7)
        assert len(core.calls) == 3
    finally:
        ack.stop()
        ack.join(5)
