"""Answers of solves whose inputs recur, so that the same solve is not run twice.

An operator solves every service again at every pass, and most of those solves repeat one already made:
a pass woken by a pool becoming ready reuses the last traffic reading, a service with a static workload
or an unchanged spec and traffic reads the same numbers every interval, and within one pass the same
split is asked for more than once. A solve (solver/ilp.py) is a pure function of its items, options and
settings, so its answer can be kept under exactly those inputs: the key is a SHA-256 digest of their
exact `repr` (every float to the last bit, the current allocation sorted), and any change to any of them,
however small, is a new key. Only proven answers are kept (optimal, infeasible): a time-limited run that
stopped early could end elsewhere next time. The least recently used answers go first beyond `entries`.

Thread-safe: the operator's passes solve in worker threads.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

DEFAULT_ENTRIES = 20000  # up to a few KB each (the split per item): several solves per service of a fleet of thousands


class SolveMemo:
    """A bounded map from the digest of a solve's inputs to its answer, with hit and miss counts."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self.entries = entries
        self.hits = 0
        self.misses = 0
        self._answers: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(*inputs: Any) -> bytes:
        """The digest of `inputs` (frozen dataclasses, tuples, numbers, strings: their repr is exact)."""
        return hashlib.sha256(repr(inputs).encode()).digest()

    def get(self, key: bytes) -> Any | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is None:
                self.misses += 1
                return None
            self.hits += 1
            self._answers.move_to_end(key)
            return answer

    def put(self, key: bytes, answer: Any) -> None:
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.entries:
                self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
