"""A week of traffic replayed through the operator's pure reconcile, with GPU pools that take minutes to
start: the traffic generator, the pools, the driver and the cost accounting of bench/replay.py.

Traffic (`week_traffic`): per minute, a true rate (a diurnal curve, weekdays and weekends, bursts, and
document batches at night) and a size regime (chat, mixed or documents, by hour of day). Arrivals
are Poisson per minute and split over the size buckets multinomially, so what the operator reads
over its window is a count per bucket, as the router's joint counter in Prometheus holds it.

Pools (`Pool`, `scale`): a replica asked for at time t is paid from t and ready at t + start-up
(node provisioning plus weight loading); a pool asked to shrink removes not-ready replicas first, then
the newest, as a ReplicaSet does (its `getPodsToDelete` ranks unready pods first). Capacity counts
ready replicas only; cost counts every replica that exists, ready or not.

Driver (`replay`): `reconcile()` is called as the operator's shell calls it: every `interval` (the
passes that read a new window, and the spec's scale-up window with it), and in between when a Deployment's ready replicas change (the watch)
or at the `wake_s` a move asks for (the drain's end), those passes with the last window read.
"""
from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melange.operator.core.corrections import PoolObservation
from melange.operator.core.planner import OPTION_LABEL, Owner
from melange.operator.core.problem import Inputs
from melange.operator.core.reconcile import LiveInput, Observed, Outcome, reconcile
from melange.operator.core.spec import parse_spec
from melange.operator.core.status import status_merge_patch
from melange.solver.buckets import BucketGrid
from melange.solver.workload import Workload, make_workload
from melange.testing.kube_emulator import merge_patch

MINUTE_S = 60.0
DAY_MINUTES = 1440
REGIMES = ("chat", "mixed", "documents")
OWNER = Owner("replay", "default", "uid-replay")
START_S = 1_790_000_000.0  # seconds since the epoch at minute 0 (a Monday 00:00 in the replay's clock)


@dataclass(frozen=True)
class Schedule:
    """Which size regime runs at each hour of the day: documents from `documents_from` to `documents_to`
    (hours, wrapping midnight), `mixed_hours` of mixed traffic on either side, chat the rest."""

    documents_from: float = 0.0
    documents_to: float = 6.0
    mixed_hours: float = 2.0

    def regime(self, hour: float) -> str:
        """The regime at `hour` (0 <= hour < 24)."""
        def within(start: float, end: float) -> bool:
            start, end = start % 24, end % 24
            return start <= hour < end if start <= end else hour >= start or hour < end
        if within(self.documents_from, self.documents_to):
            return "documents"
        if within(self.documents_from - self.mixed_hours, self.documents_from) or \
                within(self.documents_to, self.documents_to + self.mixed_hours):
            return "mixed"
        return "chat"


@dataclass(frozen=True)
class TrafficShape:
    """A week (or `days`) of traffic. Rate: `peak_rate` req/s at `peak_hour` on weekdays, falling to
    peak / `peak_to_trough` twelve hours away along a cosine; weekends (days 5 and 6) at `weekend`
    of that. Bursts: `bursts_per_day` on average, each `burst_minutes` long at `burst_factor` x the
    rate (drawn from the seed within the ranges). Documents arrive in batches: `batch_minutes` at the
    diurnal rate x `batch_factor`, then `gap_minutes` at the diurnal rate x `gap_factor`."""

    days: int = 7
    peak_rate: float = 8.0
    peak_to_trough: float = 6.0
    peak_hour: float = 15.0
    weekend: float = 0.6
    bursts_per_day: float = 3.0
    burst_minutes: tuple[int, int] = (3, 8)
    burst_factor: tuple[float, float] = (2.0, 3.0)
    schedule: Schedule = Schedule()
    batch_minutes: int = 90
    gap_minutes: int = 30
    batch_factor: float = 1.5
    gap_factor: float = 0.3


def diurnal_rate(shape: TrafficShape, minute: int) -> float:
    """The rate before bursts and batches: the cosine between trough and peak, scaled on weekends."""
    hour = (minute % DAY_MINUTES) / 60.0
    trough = shape.peak_rate / shape.peak_to_trough
    level = trough + (shape.peak_rate - trough) * 0.5 * (1 + math.cos(2 * math.pi * (hour - shape.peak_hour) / 24))
    return level * (shape.weekend if (minute // DAY_MINUTES) % 7 >= 5 else 1.0)


@dataclass(frozen=True)
class Traffic:
    """Per minute: the true rate (req/s), the regime's index in `REGIMES`, whether a burst runs, and the
    requests that arrived per bucket (`counts[minute]`, the grid's shape)."""

    rates: np.ndarray
    regimes: np.ndarray
    bursts: np.ndarray
    counts: np.ndarray

    @property
    def minutes(self) -> int:
        return len(self.rates)


def regime_of(shape: TrafficShape, minute: int) -> str:
    return shape.schedule.regime((minute % DAY_MINUTES) / 60.0)


def true_rates(shape: TrafficShape, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per minute: the true rate, the regime index and the burst flag (no arrivals drawn yet)."""
    minutes = shape.days * DAY_MINUTES
    rng = np.random.default_rng([seed, 1])
    rates = np.array([diurnal_rate(shape, m) for m in range(minutes)])
    regimes = np.array([REGIMES.index(regime_of(shape, m)) for m in range(minutes)])
    # Document batches: the clock restarts at each documents regime's first minute.
    start = None
    for m in range(minutes):
        if REGIMES[regimes[m]] != "documents":
            start = None
            continue
        start = m if start is None else start
        phase = (m - start) % (shape.batch_minutes + shape.gap_minutes)
        rates[m] *= shape.batch_factor if phase < shape.batch_minutes else shape.gap_factor
    bursts = np.zeros(minutes, dtype=bool)
    for _ in range(rng.poisson(shape.bursts_per_day * shape.days)):
        begin = int(rng.integers(0, minutes))
        length = int(rng.integers(shape.burst_minutes[0], shape.burst_minutes[1] + 1))
        factor = float(rng.uniform(*shape.burst_factor))
        span = slice(begin, min(minutes, begin + length))
        rates[span] = np.where(bursts[span], rates[span], rates[span] * factor)
        bursts[span] = True
    return rates, regimes, bursts


def week_traffic(shape: TrafficShape, mixes: Mapping[str, np.ndarray], seed: int) -> Traffic:
    """The traffic of `shape`, deterministic from `seed`: per minute a Poisson count at the true rate x
    60 s, split over the buckets by the regime's mix (a multinomial draw)."""
    rates, regimes, bursts = true_rates(shape, seed)
    rng = np.random.default_rng([seed, 2])
    totals = rng.poisson(rates * MINUTE_S)
    first = np.asarray(mixes[REGIMES[0]], dtype=float)
    counts = np.zeros((len(rates), *first.shape), dtype=np.int64)
    for m, (total, regime) in enumerate(zip(totals, regimes)):
        mix = np.asarray(mixes[REGIMES[regime]], dtype=float).ravel()
        counts[m] = rng.multinomial(total, mix / mix.sum()).reshape(first.shape)
    return Traffic(rates, regimes, bursts, counts)


def window_workload(traffic: Traffic, minute: int, window_minutes: int, grid: BucketGrid) -> tuple[Workload, int]:
    """What Prometheus shows at the start of `minute` over the last `window_minutes`: the rate and mix of
    the requests counted, and their number. The service ran before minute 0: a window reaching back
    before it reads the first `window_minutes` instead."""
    first = max(0, minute - window_minutes)
    counts = traffic.counts[first:first + window_minutes].sum(axis=0)
    total = int(counts.sum())
    if total == 0:
        return make_workload(0.0, grid, [[1.0 / counts.size] * grid.shape[1]] * grid.shape[0], "prometheus"), 0
    return make_workload(total / (window_minutes * MINUTE_S), grid, (counts / total).tolist(), "prometheus"), total


@dataclass(frozen=True)
class Replica:
    """One pod of a pool: paid from `created_s`, serving from `ready_s`, gone at `deleted_s`."""

    option: str
    created_s: float
    ready_s: float
    deleted_s: float | None = None

    def alive(self, t: float) -> bool:
        return self.created_s <= t and (self.deleted_s is None or t < self.deleted_s)

    def ready(self, t: float) -> bool:
        return self.alive(t) and self.ready_s <= t


def scale(replicas: Sequence[Replica], wanted: Mapping[str, int], now_s: float,
          startup_s: Mapping[str, float]) -> tuple[Replica, ...]:
    """The replicas after each pool is asked for `wanted[option]` at `now_s`: new ones start (ready after
    the option's start-up); surplus ones go, not-ready first, then the newest."""
    result = list(replicas)
    for option in sorted({r.option for r in replicas} | set(wanted)):
        alive = [k for k, r in enumerate(result) if r.option == option and r.alive(now_s)]
        want = wanted.get(option, 0)
        if want > len(alive):
            result += [Replica(option, now_s, now_s + startup_s[option])] * (want - len(alive))
        elif want < len(alive):
            doomed = sorted(alive, key=lambda k: (result[k].ready(now_s), -result[k].created_s))
            for k in doomed[:len(alive) - want]:
                result[k] = Replica(option, result[k].created_s, result[k].ready_s, now_s)
    return tuple(result)


def ready_counts(replicas: Sequence[Replica], t: float) -> dict[str, int]:
    """Ready replicas per pool at `t`."""
    counts: dict[str, int] = {}
    for r in replicas:
        if r.ready(t):
            counts[r.option] = counts.get(r.option, 0) + 1
    return counts


@dataclass(frozen=True)
class Bill:
    """What the replicas cost from `start_s` to `end_s`: $, the replica-hours of each pool, how many
    replicas were started (not those up when the replay began, ready at once), and the GPU-hours paid
    while they started (not yet ready)."""

    dollars: float
    replica_hours: Mapping[str, float]
    started: int
    starting_gpu_hours: float


def bill(replicas: Sequence[Replica], price_per_hour: Mapping[str, float], gpus: Mapping[str, int],
         start_s: float, end_s: float) -> Bill:
    """Every replica is paid per second of its life within [start_s, end_s), ready or not."""
    dollars, starting, started = 0.0, 0.0, 0
    hours: dict[str, float] = {}
    for r in replicas:
        begin, end = max(r.created_s, start_s), min(end_s if r.deleted_s is None else r.deleted_s, end_s)
        if end <= begin:
            continue
        life = (end - begin) / 3600.0
        hours[r.option] = hours.get(r.option, 0.0) + life
        dollars += life * price_per_hour[r.option]
        if start_s <= r.created_s < end_s and r.ready_s > r.created_s:  # (those up before the replay are ready)
            started += 1
            starting += gpus[r.option] * max(0.0, min(r.ready_s, end) - begin) / 3600.0
    return Bill(dollars, hours, started, starting)


@dataclass(frozen=True)
class Run:
    """A replay's record: the replicas that ever existed, the allocation the Deployments asked for after
    each interval pass, the passes that started a move (time, kind, reason; the first allocation, up
    before the replay, is none), and the ready replicas at
    the start of every minute (after that minute's pass)."""

    replicas: tuple[Replica, ...]
    moves: tuple[tuple[float, str, str], ...]
    ready: tuple[Mapping[str, int], ...]
    asked: tuple[Mapping[str, int], ...] = field(default=())
    corrections: tuple[Mapping[str, Any], ...] = field(default=())  # status.profileCorrections per interval pass


def _deployments(desired: Sequence[Mapping[str, Any]] | None, replicas: Sequence[Replica],
                 t: float) -> list[dict[str, Any]]:
    """The objects as they stand at `t`: desired, with each pool Deployment's ready replicas."""
    actual = copy.deepcopy(list(desired or []))
    ready = ready_counts(replicas, t)
    for obj in actual:
        if obj["kind"] == "Deployment":
            option = (obj["metadata"].get("labels") or {}).get(OPTION_LABEL)
            obj["status"] = {"readyReplicas": ready.get(option, 0) if option else obj["spec"]["replicas"]}
    return actual


def asked_replicas(desired: Sequence[Mapping[str, Any]] | None) -> dict[str, int]:
    """Replicas per pool the desired Deployments ask for."""
    return {o["metadata"]["labels"][OPTION_LABEL]: int(o["spec"]["replicas"]) for o in desired or []
            if o["kind"] == "Deployment" and OPTION_LABEL in (o["metadata"].get("labels") or {})}


def replay(spec: Mapping[str, Any], inputs: Inputs, traffic: Traffic, grid: BucketGrid, interval_s: float,
           window_s: float, startup_s: Mapping[str, float], drain_s: float = 90.0,
           counted: bool = True, reconcile_fn: Callable[..., Outcome] = reconcile,
           observe_pools: Callable[[int, Sequence[Mapping[str, Any]] | None, Sequence[Mapping[str, int]]],
                                   Mapping[str, PoolObservation]] | None = None) -> Run:
    """Drive `reconcile` over the traffic (see the module docstring). The interval and window must be
    whole minutes; passes between interval ticks reuse the last window read. `counted` False withholds
    the count from the operator, so it takes the rate read as exact (no noise margins). `observe_pools`
    (minute, the objects asked for, the ready replicas of every minute so far) gives each pool's window
    as the per-pool queries would read it (melange.testing.latency_model); None: no pool is observed."""
    step, window = round(interval_s / MINUTE_S), round(window_s / MINUTE_S)
    if step < 1 or window < 1 or step * MINUTE_S != interval_s or window * MINUTE_S != window_s:
        raise ValueError("interval and window must be whole minutes")
    prometheus = parse_spec(spec).workload.prometheus
    scale_up = prometheus.scale_up if prometheus is not None else None  # read as the shell reads it
    recent = None if scale_up is None else round(scale_up[1] / MINUTE_S)
    if recent is not None and (recent < 1 or recent * MINUTE_S != scale_up[1]):
        raise ValueError("the scale-up window must be whole minutes")
    end_s = START_S + traffic.minutes * MINUTE_S
    status: dict[str, Any] = {}
    desired: list[dict[str, Any]] | None = None
    replicas: tuple[Replica, ...] = ()
    live: LiveInput | None = None
    moves: list[tuple[float, str, str]] = []
    ready_log: list[Mapping[str, int]] = []
    asked_log: list[Mapping[str, int]] = []
    correction_log: list[Mapping[str, Any]] = []
    extra: list[float] = []  # pass times besides the interval ticks (a pool became ready, a move's wake)
    next_tick = START_S

    def run_pass(now: float) -> None:
        nonlocal status, desired, replicas
        # The service ran before the replay: its first allocation is up already.
        started = {name: 0.0 for name in startup_s} if desired is None else startup_s
        outcome = reconcile_fn(OWNER, Observed(spec, 1, status, _deployments(desired, replicas, now), now), inputs,
                               live=live, drain_s=drain_s)
        if outcome.spec is None:
            raise ValueError(f"the operator refuses the spec: {outcome.events[0].message if outcome.events else ''}")
        status = merge_patch(status, status_merge_patch(status, outcome.status))
        if outcome.decision is not None and outcome.decision.moves and outcome.decision.kind != "initial":
            moves.append((now, outcome.decision.kind, outcome.decision.reason))
        if outcome.desired is not None:
            desired = outcome.desired
            before = len(replicas)
            replicas = scale(replicas, asked_replicas(desired), now, started)
            for r in replicas[before:]:
                heapq.heappush(extra, r.ready_s)
        if outcome.wake_s is not None:
            heapq.heappush(extra, max(outcome.wake_s, now + 1.0))

    for minute in range(traffic.minutes):
        tick = START_S + minute * MINUTE_S
        while extra and extra[0] < tick:
            at = heapq.heappop(extra)
            while extra and extra[0] <= at:
                heapq.heappop(extra)
            if at < end_s and live is not None:
                run_pass(at)
        if tick >= next_tick:
            workload, requests = window_workload(traffic, minute, window, grid)
            pools = observe_pools(minute, desired, ready_log) if observe_pools is not None else {}
            surge = None
            if recent is not None:
                recent_workload, recent_requests = window_workload(traffic, minute, recent, grid)
                surge = LiveInput(recent_workload, f"{recent_requests} requests in {scale_up[0]}", scale_up[0],
                                  float(recent_requests) if counted else None)
            live = LiveInput(workload, f"{requests} requests in {window_s:g}s", f"{window_s:g}s",
                             float(requests) if counted else None, pools, recent=surge)
            run_pass(tick)
            next_tick = tick + interval_s
            asked_log.append(asked_replicas(desired))
            correction_log.append(copy.deepcopy(status.get("profileCorrections") or {}))
        ready_log.append(ready_counts(replicas, tick))
    return Run(replicas, tuple(moves), tuple(ready_log), tuple(asked_log), tuple(correction_log))
