"""Pools whose true capacity differs from their profiles, and the latency their vLLM pods would report:
what the operator's per-pool queries read, for closed-loop tests and bench/replay.py.

Latency model (per minute, per pool). The pool's load against its *true* capacity is
rho = u / c, u its utilisation against the profile (operator/core/corrections.py `utilisation`, the
same definition the profile's max rates give) and c the true capacity as a share of the profile.
Below capacity a decode step costs a fixed part plus a part that grows with the batch, and the batch
grows with the load, so the SLO statistic (TPOT) is

    latency = SLO x (a + (1 - a) rho)          rho <= 1   (a = `idle_share`: an idle replica's share)
    latency = SLO x (1 + k (rho - 1))          rho > 1    (k = `overload_slope`: queueing)

equal to the SLO exactly at rho = 1, the profile's own definition of capacity. Requests wait
(`waiting` per replica) only beyond capacity: `queue_per_overload` x (rho - 1). The window's statistic
is the request-weighted mean of the minutes', times a log-normal noise of `noise` (relative) drawn
from the seed. The router's split comes from the routing ConfigMap the operator asked for (its
input weights); minutes a pool has no ready replica it gets no traffic (the router skips a pool
without endpoints).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from melange.operator.core.corrections import PoolObservation, utilisation
from melange.operator.core.planner import routing_config_name
from melange.solver.routing import TABLE_KEY
from melange.testing.replay import MINUTE_S, OWNER, START_S, Traffic


@dataclass(frozen=True)
class LatencyModel:
    idle_share: float = 0.2
    overload_slope: float = 3.0
    queue_per_overload: float = 4.0
    noise: float = 0.0

    def latency(self, slo_ms: float, rho: float) -> float:
        """The SLO statistic at load `rho` of the true capacity."""
        if rho <= 1.0:
            return slo_ms * (self.idle_share + (1.0 - self.idle_share) * rho)
        return slo_ms * (1.0 + self.overload_slope * (rho - 1.0))

    def waiting(self, rho: float) -> float:
        return max(0.0, rho - 1.0) * self.queue_per_overload


def input_weights(desired: Sequence[Mapping[str, Any]] | None) -> list[dict[str, float]] | None:
    """Per input bucket, the share of requests each pool gets, from the routing ConfigMap asked for."""
    for obj in desired or []:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == routing_config_name(OWNER):
            return [dict(w) for w in json.loads(obj["data"][TABLE_KEY])["input_weights"]]
    return None


class PoolSimulator:
    """Observes each pool of a replay (`observe`, the replay's `observe_pools`). `max_rps`: each option's
    profile as the operator has it (uncorrected); `true_capacity`: c per option (absent: 1)."""

    def __init__(self, traffic: Traffic, window_minutes: int, max_rps: Mapping[str, Sequence[Sequence[float | None]]],
                 true_capacity: Mapping[str, float], slo_tpot_ms: float, model: LatencyModel = LatencyModel(),
                 seed: int = 0) -> None:
        self.traffic, self.window, self.max_rps = traffic, window_minutes, max_rps
        self.true_capacity, self.slo, self.model = dict(true_capacity), slo_tpot_ms, model
        self.rng = np.random.default_rng([seed, 7])
        self.truth: list[dict[str, float]] = []  # per observed window: each pool's noise-free latency / SLO

    def rho(self, option: str, counts: np.ndarray, ready: int) -> float:
        """A minute's load of `option` against its true capacity, given its requests per bucket."""
        total = float(counts.sum())
        if total <= 0 or ready <= 0:
            return 0.0
        u = utilisation(total / MINUTE_S, (counts / total).tolist(), ready, self.max_rps[option])
        return u / self.true_capacity.get(option, 1.0)

    def observe(self, minute: int, desired: Sequence[Mapping[str, Any]] | None,
                ready_log: Sequence[Mapping[str, int]]) -> dict[str, PoolObservation]:
        weights = input_weights(desired)
        if weights is None:
            return {}
        first = max(0, minute - self.window)
        pools = sorted({p for row in weights for p in row})
        seen: dict[str, PoolObservation] = {}
        truth: dict[str, float] = {}
        for option in pools:
            share = np.array([[row.get(option, 0.0)] for row in weights])
            counts_total = np.zeros_like(self.traffic.counts[0], dtype=float)
            latency_sum, waiting_sum, ready_sum, minutes = 0.0, 0.0, 0.0, 0
            for m in range(first, minute):
                ready = (ready_log[m] if m < len(ready_log) else {}).get(option, 0)
                if ready <= 0:
                    continue
                counts = self.traffic.counts[m] * share
                rho = self.rho(option, counts, ready)
                counts_total += counts
                latency_sum += float(counts.sum()) * self.model.latency(self.slo, rho)
                waiting_sum += self.model.waiting(rho)
                ready_sum += ready
                minutes += 1
            requests = float(counts_total.sum())
            if minutes == 0 or requests <= 0:
                continue
            mean = latency_sum / requests
            truth[option] = mean / self.slo
            noisy = mean * float(np.exp(self.rng.normal(0.0, self.model.noise))) if self.model.noise else mean
            seen[option] = PoolObservation(
                requests=requests, rate=requests / (minutes * MINUTE_S),
                distribution=tuple(tuple(float(v) for v in row) for row in counts_total / requests),
                replicas=ready_sum / minutes, tpot_ms=noisy, ttft_ms=None,
                waiting_per_replica=waiting_sum / minutes, end_s=START_S + minute * MINUTE_S,
                window_s=self.window * MINUTE_S)
        self.truth.append(truth)
        return seen


def steady_traffic(rate: float, mix: Sequence[Sequence[float]], minutes: int, seed: int) -> Traffic:
    """`minutes` of Poisson arrivals at a constant `rate` (req/s), split over the buckets by `mix`."""
    rng = np.random.default_rng([seed, 3])
    mix_array = np.asarray(mix, dtype=float)
    flat = (mix_array / mix_array.sum()).ravel()
    counts = np.array([rng.multinomial(n, flat).reshape(mix_array.shape)
                       for n in rng.poisson(rate * MINUTE_S, size=minutes)], dtype=np.int64)
    return Traffic(np.full(minutes, rate), np.zeros(minutes, dtype=int), np.zeros(minutes, dtype=bool), counts)
