"""The operator over a week of shifting traffic, against the hindsight optimum and what users run today.

A week of per-minute traffic (melange.testing.replay: diurnal rate, weekends, bursts, chat by day,
long documents in batches at night, mixed between; Poisson arrivals split over the buckets) is
replayed through the operator's pure reconcile pass by pass, with pools that take minutes to become
ready (MODELS: 3 for the 8B model, 8 for the 70B), for both models and three workloads. Baselines on the same
traffic:

    hindsight   each minute's true traffic solved exactly (same SLO and targetUtilisation), moves
                instant and free: a lower bound
    static      one allocation for the week: the cheapest mix serving each regime's peak (the highest
                10-minute mean of the true rate), what a team provisions by hand
    single      the GPU type that is cheapest alone in hindsight, autoscaled by the same operator
                (its only option) with the same interval, window and hysteresis
    no-hyst     the mix re-solved every pass on the rate as read (minSavingsPercent 0, cooldown 0, no
                noise margins)

Columns: total $ and against hindsight; moves (passes that started one) and replicas started, with
the GPU-hours paid while they started; minutes whose ready replicas could not serve the true rate
within the SLO (at full load, the profiles' max rates) and the worst shortfall; of those, the minutes
outside bursts and more than the start-up time after a shift; minutes from each shift (a regime
change or a document batch starting) until the ready replicas serve (median / worst); moves within
an hour after a shift, per shift.

Mis-profiled (`--misprofiled a10g=0.7`): one GPU type truly sustains 0.7 x its profile. The pools'
latency comes from melange.testing.latency_model (latency reaches the SLO where the load reaches the true
capacity, 3% noise on each window's statistic), the short minutes and hindsight are judged on the true
capacities, and the operator runs with and without `profileCorrection`.

Usage: python bench/replay.py [--quick] [--seed 1] [--days 7] [--models 8b,70b]
                              [--workloads chat-heavy,mixed,document-heavy] [--plot docs/replay.png]
       python bench/replay.py --sensitivity [--days 1] [--seeds 1,2,3] [--rows defaults,window]
       python bench/replay.py --misprofiled a10g=0.7 [--quick]
"""
from __future__ import annotations

import argparse
import bisect
import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from common import PAPER_DATA, print_table

import melange.operator.core.reconcile as reconcile_module
from melange.operator.core.decision import covers
from melange.operator.core.problem import build_problem, default_inputs, solver_settings
from melange.operator.core.spec import parse_spec
from melange.solver.buckets import BucketGrid
from melange.solver.ilp import IlpSettings
from melange.solver.metrics.traffic_player import DOCUMENTS
from melange.solver.problem import Problem
from melange.solver.solve import allocate, single_type_replicas
from melange.solver.workload import make_workload
from melange.testing.latency_model import LatencyModel, PoolSimulator
from melange.testing.replay import (MINUTE_S, REGIMES, START_S, Run, Schedule, Traffic, TrafficShape,
                                    bill, replay, week_traffic)

# Inputs up to 8000 tokens: Llama-3's 8192-token context holds no longer prompt (the Arena trace's
# rows above 8000 are folded into the last row).
GRID = BucketGrid((25, 100, 250, 500, 1000, 2000, 4000, 8000), (25, 100, 250, 500, 1000, 2000))
ARENA = PAPER_DATA / "early-profiles" / "arena_distribution_from_trace.json"


def mixes() -> dict[str, np.ndarray]:
    """Chat: the Chatbot Arena mix (bench/data); documents: the traffic player's long documents with
    short summaries; mixed: half of each."""
    arena = np.asarray(json.loads(ARENA.read_text())["arena_10x6"]["share"], dtype=float)
    chat = np.vstack([arena[:7], arena[7:].sum(axis=0, keepdims=True)])
    documents = np.asarray(DOCUMENTS.distribution(GRID), dtype=float)
    chat, documents = chat / chat.sum(), documents / documents.sum()
    return {"chat": chat, "documents": documents, "mixed": (chat + documents) / 2}


@dataclass(frozen=True)
class Model:
    name: str
    catalog: str
    options: tuple[tuple[str, str, int], ...]  # (name, catalog GPU, GPUs per replica)
    peak_rate: float
    startup_s: float


MODELS = {
    "8b": Model("Llama-3-8B", "llama-3-8b", (("l4", "l4", 1), ("a10g", "a10g", 1), ("a100", "a100-80gb", 1),
                                             ("h100", "h100-sxm", 1)), 6.0, 180.0),
    "70b": Model("Llama-3-70B", "llama-3-70b", (("l40s-x4", "l40s", 4), ("a100-x4", "a100-80gb", 4),
                                                ("h100-x4", "h100-sxm", 4), ("h100-x8", "h100-sxm", 8)), 2.0, 480.0),
}
WORKLOADS = {  # documents hours, mixed hours either side; chat the rest
    "chat-heavy": Schedule(documents_from=1, documents_to=5, mixed_hours=1),
    "mixed": Schedule(documents_from=0, documents_to=6, mixed_hours=6),
    "document-heavy": Schedule(documents_from=20, documents_to=8, mixed_hours=2),
}


@dataclass(frozen=True)
class Settings:
    """The reallocation settings a run uses (the spec's defaults unless a sensitivity row changes one)."""

    interval_s: float = 60.0
    window_s: float = 600.0
    target_utilisation: float = 0.85
    min_savings_percent: float = 5.0
    cooldown_s: float = 600.0
    scale_up_window_s: float = 120.0  # 0: none


def service_spec(model: Model, settings: Settings, options: Sequence[str] | None = None,
                 hysteresis: bool = True) -> dict[str, Any]:
    """The LLMService of the model, its workload read from Prometheus over the window."""
    chosen = [o for o in model.options if options is None or o[0] in options]
    return {"model": model.catalog, "catalogModel": model.catalog, "slo": {"tpotMs": 120},
            "gpuOptions": [{"name": n, "gpu": g, "gpusPerReplica": k} for n, g, k in chosen],
            "workload": {"source": "prometheus",
                         "prometheus": {"window": f"{settings.window_s:g}s",
                                        "scaleUpWindow": f"{settings.scale_up_window_s:g}s"},
                         "grid": {"inputEdges": list(GRID.input_edges), "outputEdges": list(GRID.output_edges)}},
            "reallocation": {"interval": f"{settings.interval_s:g}s",
                             "targetUtilisation": settings.target_utilisation,
                             "minSavingsPercent": settings.min_savings_percent if hysteresis else 0,
                             "cooldown": f"{max(1.0, settings.cooldown_s) if hysteresis else 1:g}s"}}


class Oracle:
    """The true traffic's side: the optimum and the capacity of replicas for a regime at a rate, under
    the model's options (all of them), each answer cached; both are monotone in the rate."""

    def __init__(self, model: Model, settings: Settings, mix: Mapping[str, np.ndarray],
                 capacity: Mapping[str, float] | None = None) -> None:
        spec = parse_spec(service_spec(model, settings))
        self.mode = spec.routing_mode
        self.settings = solver_settings(spec)
        self.full_load = IlpSettings(target_utilisation=1.0)
        # `capacity`: each option's true capacity as a share of its profile (mis-profiled GPU types).
        self.problems = {r: build_problem(spec, make_workload(1.0, GRID, mix[r].tolist(), "replay"), default_inputs(),
                                          capacity) for r in REGIMES}
        self.prices = {o.name: o.replica_price for o in self.problems["chat"].options}
        self.gpus = {o.name: o.gpus_per_replica for o in self.problems["chat"].options}
        self._served: dict[tuple, tuple[float, float]] = {}
        self._optimum: dict[tuple[str, float], tuple[float, dict[str, int]]] = {}
        self._capacity: dict[tuple, float] = {}

    def problem(self, regime: str, rate: float) -> Problem:
        base = self.problems[regime]
        return replace(base, workload=base.workload.with_rate(rate, "replay"))

    def serves(self, replicas: Mapping[str, int], regime: str, rate: float) -> bool:
        """Whether the replicas serve the regime at `rate` within the SLO at full load."""
        key = (tuple(sorted((k, v) for k, v in replicas.items() if v)), regime)
        low, high = self._served.get(key, (0.0, math.inf))
        if rate <= low:
            return True
        if rate >= high:
            return False
        ok = bool(key[0]) and covers(self.problem(regime, rate), replicas, self.full_load, self.mode)
        self._served[key] = (max(low, rate), high) if ok else (low, min(high, rate))
        return ok

    def capacity(self, replicas: Mapping[str, int], regime: str, above: float) -> float:
        """The highest rate of the regime the replicas serve (to 0.5%), known to be below `above`."""
        key = (tuple(sorted((k, v) for k, v in replicas.items() if v)), regime)
        if key in self._capacity and self._capacity[key] < above:
            return self._capacity[key]
        low, high = 0.0, above
        while high - low > 0.005 * high:
            middle = (low + high) / 2
            low, high = (middle, high) if self.serves(replicas, regime, middle) else (low, middle)
        self._capacity[key] = low
        return low

    def optimum(self, regime: str, rate: float) -> tuple[float, dict[str, int]]:
        """$/h and replicas of the optimum for the regime at `rate` (targetUtilisation headroom)."""
        key = (regime, rate)
        if key not in self._optimum:
            allocation = allocate(self.problem(regime, rate), self.settings, self.mode)
            self._optimum[key] = (allocation.cost_per_hour, dict(allocation.replicas))
        return self._optimum[key]

    def optimum_costs(self, regime: str, rates: Sequence[float]) -> dict[float, float]:
        """The optimum's $/h at each rate. The cost is non-decreasing in the rate (an allocation serving a
        rate serves any lower one), so where two rates cost the same every rate between does too: only
        the rates where the cost steps are solved."""
        ordered = sorted(set(rates))
        costs: dict[float, float] = {}

        def fill(lo: int, hi: int) -> None:
            c_lo, c_hi = self.optimum(regime, ordered[lo])[0], self.optimum(regime, ordered[hi])[0]
            if abs(c_lo - c_hi) < 1e-9:
                for k in range(lo, hi + 1):
                    costs[ordered[k]] = c_lo
                return
            if hi - lo <= 1:
                costs[ordered[lo]], costs[ordered[hi]] = c_lo, c_hi
                return
            middle = (lo + hi) // 2
            fill(lo, middle)
            fill(middle, hi)

        if ordered:
            fill(0, len(ordered) - 1)
        return costs


def shifts(shape: TrafficShape, traffic: Traffic) -> list[int]:
    """Minutes at which the size regime changes or a document batch starts (a step up of the rate)."""
    found = []
    for m in range(1, traffic.minutes):
        regime_change = traffic.regimes[m] != traffic.regimes[m - 1]
        batch = REGIMES[traffic.regimes[m]] == "documents" and not traffic.bursts[m] and not traffic.bursts[m - 1] \
            and traffic.rates[m] > 2 * traffic.rates[m - 1]
        if regime_change or batch:
            found.append(m)
    return found


@dataclass(frozen=True)
class Scores:
    """One run's row."""

    dollars: float
    moves: int
    started: int
    starting_gpu_hours: float
    short_minutes: int
    worst_short: float
    late_minutes: int
    to_serve: tuple[int, ...]
    moves_per_shift: float
    per_minute_cost: np.ndarray


def minute_costs(run: Run, prices: Mapping[str, float], minutes: int) -> np.ndarray:
    """$/h of the replicas alive at each minute's start."""
    cost = np.zeros(minutes)
    for r in run.replicas:
        begin = math.ceil((r.created_s - START_S) / MINUTE_S - 1e-9)
        end = minutes if r.deleted_s is None else math.ceil((r.deleted_s - START_S) / MINUTE_S - 1e-9)
        cost[max(0, begin):max(0, min(end, minutes))] += prices[r.option]
    return cost


def score(run: Run, oracle: Oracle, traffic: Traffic, shift_minutes: Sequence[int], startup_s: float) -> Scores:
    minutes = traffic.minutes
    total = bill(run.replicas, oracle.prices, oracle.gpus, START_S, START_S + minutes * MINUTE_S)
    short, worst, late = 0, 0.0, 0
    short_at = np.zeros(minutes, dtype=bool)
    startup_minutes = math.ceil(startup_s / MINUTE_S)
    for m in range(minutes):
        regime, rate = REGIMES[traffic.regimes[m]], float(traffic.rates[m])
        if oracle.serves(run.ready[m], regime, rate):
            continue
        short += 1
        short_at[m] = True
        worst = max(worst, 1 - oracle.capacity(run.ready[m], regime, rate) / rate)
        last = shift_minutes[bisect.bisect_right(shift_minutes, m) - 1] if shift_minutes and \
            shift_minutes[0] <= m else None
        if not traffic.bursts[m] and (last is None or m - last >= startup_minutes):
            late += 1
    to_serve = []
    for s in shift_minutes:
        k = s
        while k < minutes and short_at[k]:
            k += 1
        to_serve.append(k - s)
    move_minutes = [(t - START_S) / MINUTE_S for t, _, _ in run.moves]
    near = sum(1 for t in move_minutes for s in shift_minutes if s <= t < s + 60)
    return Scores(total.dollars, len(run.moves), total.started, total.starting_gpu_hours, short, worst, late,
                  tuple(to_serve), near / max(1, len(shift_minutes)), minute_costs(run, oracle.prices, minutes))


def static_peak(oracle: Oracle, traffic: Traffic, window_minutes: int) -> dict[str, int]:
    """The cheapest single allocation serving each regime's peak 10-minute mean rate (with headroom):
    each regime's optimum at its peak is a candidate; the cheapest candidate serving every peak wins,
    else the per-option maximum of the candidates (which serves every peak)."""
    mean = np.convolve(traffic.rates, np.ones(window_minutes) / window_minutes, mode="same")
    peaks = {r: float(mean[traffic.regimes == k].max()) for k, r in enumerate(REGIMES) if (traffic.regimes == k).any()}
    candidates = [oracle.optimum(r, rate)[1] for r, rate in peaks.items()]
    cost = lambda a: sum(oracle.prices[k] * v for k, v in a.items())  # noqa: E731
    serving = [a for a in candidates if all(covers(oracle.problem(r, rate), a, oracle.settings, oracle.mode)
                                            for r, rate in peaks.items())]
    if serving:
        return min(serving, key=cost)
    return {k: max(a.get(k, 0) for a in candidates) for k in oracle.prices}


def best_single(oracle: Oracle, traffic: Traffic) -> tuple[str, float]:
    """The option cheapest alone over the week in hindsight (each minute's true rate, the single-type
    replicas of the paper's baseline at the same headroom), and that cost."""
    totals: dict[str, float] = {}
    cache: dict[tuple[str, float], dict[str, int | None]] = {}
    for m in range(traffic.minutes):
        key = (REGIMES[traffic.regimes[m]], float(traffic.rates[m]))
        if key not in cache:
            cache[key] = single_type_replicas(oracle.problem(*key), oracle.settings)
        for name, n in cache[key].items():
            totals[name] = totals.get(name, 0.0) + (math.inf if n is None else n * oracle.prices[name] / 60)
    name = min(totals, key=totals.get)
    return name, totals[name]


@dataclass(frozen=True)
class Job:
    model: str
    workload: str
    kind: str  # operator, no-hyst, single, static
    settings: Settings
    days: int
    seed: int
    option: str | None = None
    static: Mapping[str, int] | None = None
    capacity: tuple[tuple[str, float], ...] = ()  # true capacity per option, as a share of its profile
    correct: bool = True  # spec.profileCorrection.enabled
    known: bool = False  # the operator plans with the true capacities from the start (a fixed correction)


def traffic_for(model: Model, workload: str, days: int, seed: int) -> tuple[TrafficShape, Traffic]:
    shape = TrafficShape(days=days, peak_rate=model.peak_rate, schedule=WORKLOADS[workload])
    return shape, week_traffic(shape, mixes(), seed)


def run_job(job: Job) -> tuple[Job, Scores, float]:
    """One replay (or the static allocation) scored against the true traffic; seconds of CPU it took."""
    began = time.process_time()
    model = MODELS[job.model]
    shape, traffic = traffic_for(model, job.workload, job.days, job.seed)
    oracle = Oracle(model, job.settings, mixes(), dict(job.capacity))
    startup = {name: model.startup_s for name, _, _ in model.options}
    if job.kind == "static":
        ready = {k: v for k, v in (job.static or {}).items()}
        from melange.testing.replay import Replica
        run = Run(tuple(Replica(k, START_S, START_S) for k, v in ready.items() for _ in range(v)), (),
                  tuple(ready for _ in range(traffic.minutes)))
    else:
        spec = service_spec(model, job.settings, [job.option] if job.option else None, job.kind != "no-hyst")
        observe, reconcile_fn = None, reconcile_module.reconcile
        if job.known:
            reconcile_fn = functools.partial(_known_capacity, dict(job.capacity))
        elif job.capacity:
            spec["profileCorrection"] = {"enabled": job.correct}
            profiles = Oracle(model, job.settings, mixes()).problems["chat"]
            simulator = PoolSimulator(traffic, round(job.settings.window_s / MINUTE_S),
                                      {o.name: p.max_rps for o, p in zip(profiles.options, profiles.profiles)},
                                      dict(job.capacity), 120.0, LatencyModel(noise=0.03), job.seed)
            observe = simulator.observe
        run = replay(spec, default_inputs(), traffic, GRID, job.settings.interval_s, job.settings.window_s, startup,
                     counted=job.kind != "no-hyst", observe_pools=observe, reconcile_fn=reconcile_fn)
        if job.capacity:
            RUNS[job] = run
    scores = score(run, oracle, traffic, shifts(shape, traffic), model.startup_s)
    return job, scores, time.process_time() - began


RUNS: dict[Job, Run] = {}  # (in the process that ran the job)


def _known_capacity(capacity: Mapping[str, float], owner, observed, inputs, **kwargs):
    """The operator's reconcile with the true capacities stored as its corrections every pass (no window
    ever updates them: their time lies in the future), as `melange solve --correction` would plan."""
    stored = {name: {"factor": factor, "samples": 1, "updated": "2100-01-01T00:00:00Z", "announced": factor}
              for name, factor in capacity.items()}
    status = {**observed.status, "profileCorrections": stored}
    return reconcile_module.reconcile(owner, replace(observed, status=status), inputs, **kwargs)


def hindsight(model_key: str, workload: str, settings: Settings, days: int, seed: int,
              capacity: Mapping[str, float] | None = None) -> tuple[float, np.ndarray, dict, str]:
    """Hindsight $ and per-minute $/h, the static allocation, and the best single type."""
    model = MODELS[model_key]
    _, traffic = traffic_for(model, workload, days, seed)
    oracle = Oracle(model, settings, mixes(), capacity)
    per_minute = np.zeros(traffic.minutes)
    for k, regime in enumerate(REGIMES):
        at = np.flatnonzero(traffic.regimes == k)
        costs = oracle.optimum_costs(regime, [float(r) for r in traffic.rates[at]])
        per_minute[at] = [costs[float(r)] for r in traffic.rates[at]]
    static = static_peak(oracle, traffic, 10)
    single, _ = best_single(oracle, traffic)
    return float(per_minute.sum() / 60), per_minute, static, single


def describe(allocation: Mapping[str, int]) -> str:
    return " + ".join(f"{v} {k}" for k, v in allocation.items() if v) or "nothing"


def row(label: str, scores: Scores, best: float) -> list[object]:
    to_serve = f"{statistics.median(scores.to_serve):g} / {max(scores.to_serve)}" if scores.to_serve else "-"
    return [label, f"{scores.dollars:,.0f}", f"{100 * (scores.dollars / best - 1):+.1f}%", scores.moves,
            f"{scores.started} ({scores.starting_gpu_hours:.1f})", scores.short_minutes,
            f"{100 * scores.worst_short:.0f}%" if scores.short_minutes else "-", scores.late_minutes, to_serve,
            f"{scores.moves_per_shift:.2f}"]


HEADERS = ["run", "$", "vs hindsight", "moves", "started (GPU-h)", "short min", "worst", "late short", "to serve",
           "moves/shift"]


def run_all(jobs: Sequence[Job], workers: int) -> list[tuple[Job, Scores, float]]:
    if workers <= 1:
        return [run_job(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(run_job, jobs))


def main_table(args: argparse.Namespace) -> None:
    settings = Settings()
    plots = {}
    for model_key in args.models.split(","):
        for workload in args.workloads.split(","):
            began = time.perf_counter()
            best, per_minute, static, single = hindsight(model_key, workload, settings, args.days, args.seed)
            jobs = [Job(model_key, workload, "operator", settings, args.days, args.seed),
                    Job(model_key, workload, "no-hyst", settings, args.days, args.seed),
                    Job(model_key, workload, "single", settings, args.days, args.seed, option=single),
                    Job(model_key, workload, "static", settings, args.days, args.seed, static=static)]
            results = run_all(jobs, args.workers)
            print("CPU s per run: " + ", ".join(f"{j.kind} {cpu:.0f}" for j, _, cpu in results), file=sys.stderr)
            labels = {"operator": "operator (defaults)", "no-hyst": "mix, no hysteresis",
                      "single": f"{single} alone, autoscaled", "static": f"static peak: {describe(static)}"}
            print(f"\n{MODELS[model_key].name}, {workload}, {args.days} day(s), seed {args.seed}: hindsight "
                  f"${best:,.0f} ({time.perf_counter() - began:.0f} s wall)")
            print_table(HEADERS, [["hindsight (lower bound)", f"{best:,.0f}", "+0.0%", "-", "-", "-", "-", "-", "-",
                                   "-"]] + [row(labels[j.kind], s, best) for j, s, _ in results])
            sys.stdout.flush()
            plots[(model_key, workload)] = (per_minute, {labels[j.kind]: s.per_minute_cost for j, s, _ in results})
    if args.plot:
        plot(plots, args.plot)


def plot(series: Mapping[tuple[str, str], tuple[np.ndarray, Mapping[str, np.ndarray]]], path: str) -> None:
    """$/h over the replay per scenario: hindsight, the operator and the baselines, hourly means."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(series)
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 2.6 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        best, runs = series[key]
        hours = np.arange(len(best) // 60)
        hourly = lambda a: a[:len(hours) * 60].reshape(-1, 60).mean(axis=1)  # noqa: E731
        scale = 24 if len(hours) > 48 else 1  # days on the axis, or hours for a day or two
        ax.plot(hours / scale, hourly(best), color="black", lw=1.5, label="hindsight")
        for label, cost in runs.items():
            ax.plot(hours / scale, hourly(cost), lw=1, label=label)
        ax.set_ylabel("$/h")
        ax.set_title(f"{MODELS[key[0]].name}, {key[1]}", fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("day" if len(next(iter(series.values()))[0]) > 48 * 60 else "hour")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


SENSITIVITY = {  # each around the defaults (the defaults' own row is the first)
    "defaults": [("min_savings_percent", 5.0)],
    "minSavingsPercent": [("min_savings_percent", v) for v in (0.0, 20.0)],
    "cooldown": [("cooldown_s", v) for v in (1.0, 1800.0)],  # (a cooldown is positive: 1 s is none)
    "window": [("window_s", v) for v in (180.0, 1200.0)],
    "targetUtilisation": [("target_utilisation", v) for v in (0.75, 0.95)],
    "scaleUpWindow": [("scale_up_window_s", v) for v in (0.0, 300.0)],
}


def sensitivity(args: argparse.Namespace) -> None:
    """One setting at a time around the defaults (`--rows` picks the settings), each row pooled over the
    models, workloads and seeds asked for: $ against the hindsight optimum's $ summed over the same
    scenarios, moves, starts and short minutes summed, every shift's time to serve, moves per shift."""
    rows = [name for name in args.rows.split(",")] if args.rows else list(SENSITIVITY)
    unknown = sorted(set(rows) - set(SENSITIVITY))
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(unknown)} (known: {', '.join(SENSITIVITY)})")
    chosen = [(name, field, value) for name in rows for field, value in SENSITIVITY[name]]
    scenarios = [(m, w, seed) for m in args.models.split(",") for w in args.workloads.split(",") for seed in args.seeds]
    jobs = [Job(m, w, "operator", replace(Settings(), **{field: value}), args.days, seed)
            for m, w, seed in scenarios for _, field, value in chosen]
    reference = sum(hindsight(m, w, Settings(), args.days, seed)[0] for m, w, seed in scenarios)
    results = run_all(jobs, args.workers)
    print(f"\n{len(scenarios)} scenario(s) ({', '.join(f'{m} {w} seed {seed}' for m, w, seed in scenarios)}), "
          f"{args.days} day(s) each: hindsight ${reference:,.0f} in all at targetUtilisation 0.85")
    table = []
    for k, (name, _, value) in enumerate(chosen):
        pooled = [scores for _, scores, _ in results[k::len(chosen)]]
        shown = (f"{value / 60:g}m" if value >= 60 else f"{value:g}s") if name in ("cooldown", "window",
                                                                                 "scaleUpWindow") \
            else f"{value:g}"
        total = Scores(sum(s.dollars for s in pooled), sum(s.moves for s in pooled), sum(s.started for s in pooled),
                       sum(s.starting_gpu_hours for s in pooled), sum(s.short_minutes for s in pooled),
                       max(s.worst_short for s in pooled), sum(s.late_minutes for s in pooled),
                       tuple(t for s in pooled for t in s.to_serve),
                       statistics.mean(s.moves_per_shift for s in pooled), np.zeros(0))
        table.append(row("defaults" if name == "defaults" else f"{name} {shown}", total, reference))
    print_table(HEADERS, table)
    sys.stdout.flush()


def run_misprofiled(job: Job) -> tuple[Job, Scores, float, list[float]]:
    """A mis-profiled run and the mis-profiled option's factor after each interval pass."""
    job, scores, cpu = run_job(job)
    option = job.capacity[0][0]
    factors = [float((c.get(option) or {}).get("factor", 1.0)) for c in RUNS.pop(job).corrections]
    return job, scores, cpu, factors


def misprofiled(args: argparse.Namespace) -> None:
    """The operator with one GPU type below its profile, with and without profile corrections."""
    option, _, value = args.misprofiled.partition("=")
    capacity = ((option, float(value or 0.7)),)
    settings = Settings()
    for model_key in args.models.split(","):
        if option not in {name for name, _, _ in MODELS[model_key].options}:
            print(f"{MODELS[model_key].name} has no option {option!r}: skipped", file=sys.stderr)
            continue
        for workload in args.workloads.split(","):
            began = time.perf_counter()
            best = hindsight(model_key, workload, settings, args.days, args.seed, dict(capacity))[0]
            jobs = [Job(model_key, workload, "operator", settings, args.days, args.seed, capacity=capacity, correct=c)
                    for c in (False, True)] + [Job(model_key, workload, "operator", settings, args.days, args.seed,
                                                   capacity=capacity, known=True)]
            if args.workers <= 1:
                results = [run_misprofiled(j) for j in jobs]
            else:
                with ProcessPoolExecutor(args.workers) as pool:
                    results = list(pool.map(run_misprofiled, jobs))
            print(f"\n{MODELS[model_key].name}, {workload}, {args.days} day(s), seed {args.seed}, {option} at "
                  f"{capacity[0][1]:g} x its profile: hindsight ${best:,.0f} on the true capacities "
                  f"({time.perf_counter() - began:.0f} s wall)")
            rows = []
            for job, scores, _, factors in results:
                label = ("operator, true capacity known" if job.known else
                         "operator, corrections" if job.correct else "operator, no correction")
                tail = factors[len(factors) // 2:]
                shown = f"{min(factors):.2f} / {statistics.median(tail):.2f} / {factors[-1]:.2f}" if job.correct else "1"
                rows.append(row(label, scores, best) + [f"{capacity[0][1]:g} (fixed)" if job.known else shown])
            print_table(HEADERS + [f"{option} factor (min / median 2nd half / end)"], rows)
            plain, corrected = results[0][1], results[1][1]
            print(f"short minutes {plain.short_minutes} -> {corrected.short_minutes}; "
                  f"${plain.dollars:,.0f} -> ${corrected.dollars:,.0f} "
                  f"({100 * (corrected.dollars / plain.dollars - 1):+.1f}%)")
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one day of the 8B model's mixed workload (CI)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=None, help="days replayed (default 7; --quick 1)")
    parser.add_argument("--models", default="8b,70b")
    parser.add_argument("--workloads", default="chat-heavy,mixed,document-heavy")
    parser.add_argument("--plot", default=None, help="write the $/h over time to this PNG (matplotlib)")
    parser.add_argument("--sensitivity", action="store_true", help="the tuning table instead of the main one")
    parser.add_argument("--rows", default=None, help="with --sensitivity: the settings to vary, of "
                        + ", ".join(SENSITIVITY) + " (default: all)")
    parser.add_argument("--seeds", default=None, help="with --sensitivity: seeds to pool, e.g. 1,2,3 "
                        "(default: --seed)")
    parser.add_argument("--misprofiled", metavar="OPTION=FACTOR", default=None,
                        help="one GPU type sustains FACTOR x its profile: the operator with and without corrections")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    args = parser.parse_args()
    if args.quick:
        args.models, args.workloads = "8b", "mixed"
    args.days = args.days or (1 if args.quick else 7)
    args.seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    began = time.perf_counter()
    (misprofiled if args.misprofiled else sensitivity if args.sensitivity else main_table)(args)
    print(f"\n{time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
