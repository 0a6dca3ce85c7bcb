"""The pure reconcile driven pass by pass as the operator's shell drives it, under Poisson traffic:
no cluster, no Prometheus, no clock. Shared by the steady-traffic tests and bench/steady_traffic.py.

Each pass reads a window of requests, as Prometheus' `increase()` over `window_s` would count them (and
over the spec's shorter scale-up window, as the shell reads it):
arrivals are Poisson at the true rate in each interval between passes, and the window sums the last
`window_s / interval_s` intervals (so windows longer than the interval overlap, as they do in the
operator). The returned status is merged as the shell patches it, and every Deployment the pass asks
for is ready by the next pass (so moves complete).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from melange.operator.core.planner import OPTION_LABEL, Owner
from melange.operator.core.problem import Inputs, default_inputs, service_grid, static_workload
from melange.operator.core.reconcile import LiveInput, Observed, Outcome, reconcile
from melange.operator.core.spec import parse_spec
from melange.operator.core.status import status_merge_patch
from melange.solver.workload import Workload
from melange.testing.kube_emulator import merge_patch

OWNER = Owner("steady", "default", "uid-steady")
START_S = 1_790_000_000.0  # seconds since the epoch at the first pass


def window_counts(rates: Sequence[float], interval_s: float, window_s: float, seed: int,
                  recent_s: float | None = None) -> list[tuple[int, int | None]]:
    """Requests in the window read at each pass, and in its last `recent_s` seconds (the scale-up window;
    None: not read). `rates[k]` is the true req/s in the interval before pass k; before pass 0 the
    traffic ran at `rates[0]` for a whole window. The window must be a whole number of intervals; the
    shorter window holds the whole intervals it spans and a binomial share of the one it cuts (each of
    that interval's Poisson arrivals falls in it with its share of the interval: Poisson thinning)."""
    per_window = round(window_s / interval_s)
    if per_window < 1 or abs(per_window * interval_s - window_s) > 1e-9:
        raise ValueError(f"window {window_s:g} s is not a whole number of {interval_s:g} s intervals")
    rng = np.random.default_rng(seed)
    history = [float(rates[0])] * (per_window - 1) + [float(r) for r in rates]
    arrivals = rng.poisson(np.asarray(history) * interval_s)
    thinning = np.random.default_rng([seed, 1])  # its own stream: the window's counts stay those of the seed
    counts = []
    for k in range(len(rates)):
        last = k + per_window - 1
        recent = None
        if recent_s is not None:
            whole, share = divmod(min(recent_s, window_s) / interval_s, 1.0)
            recent = int(arrivals[last - int(whole) + 1:last + 1].sum()) if whole else 0
            if share > 1e-9:
                recent += int(thinning.binomial(arrivals[last - int(whole)], share))
        counts.append((int(arrivals[k:k + per_window].sum()), recent))
    return counts


def live_input(mix: Workload, requests: int, window_s: float, counted: bool = True,
               recent: tuple[str, float, int] | None = None) -> LiveInput:
    """What the operator reads for `requests` in the window: the fixed mix at requests / window, with
    the count (`counted` False withholds it, as before the operator weighed a rate's noise); `recent`
    (the scale-up window as written, its seconds, its requests): the same over it."""
    window = f"{window_s:g}s"
    shorter = None if recent is None else live_input(mix, recent[2], recent[1], counted)
    if shorter is not None:
        shorter = replace(shorter, window=recent[0])
    return LiveInput(mix.with_rate(requests / window_s, "prometheus"),
                     f"{requests} requests in {window} ({requests / window_s:.3g} req/s)", window,
                     float(requests) if counted else None, recent=shorter)


def prometheus_spec(spec: Mapping[str, Any], window_s: float, interval_s: float) -> tuple[dict[str, Any], Workload]:
    """A static service spec turned live (`source: prometheus` over `window_s`, a pass every
    `interval_s`), and its static mix at 1 req/s for the traffic."""
    live = copy.deepcopy(dict(spec))
    workload = live["workload"]
    parsed = parse_spec(spec)
    mix = static_workload(parsed, default_inputs(), service_grid(parsed, {})).with_rate(1.0)
    live["workload"] = {"source": "prometheus", "prometheus": {"window": f"{window_s:g}s"}, "grid": workload["grid"]}
    live["reallocation"] = {**live.get("reallocation", {}), "interval": f"{interval_s:g}s"}
    return live, mix


def ready(desired: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The objects as they stand once applied and every Deployment has all its replicas ready."""
    actual = copy.deepcopy(list(desired))
    for obj in actual:
        if obj["kind"] == "Deployment":
            obj["status"] = {"readyReplicas": obj["spec"]["replicas"]}
    return actual


@dataclass(frozen=True)
class Pass:
    """One pass: the true rate, the requests read, and what the reconcile returned."""

    time_s: float
    true_rate: float
    requests: int
    outcome: Outcome
    running: Mapping[str, int]  # replicas per option the Deployments ask for after this pass

    @property
    def moved(self) -> bool:
        """Whether this pass started a move (or made the first allocation)."""
        return self.outcome.decision is not None and self.outcome.decision.moves


def run_passes(spec: Mapping[str, Any], inputs: Inputs, mix: Workload, rates: Sequence[float], interval_s: float,
               window_s: float, seed: int, drain_s: float = 90.0, counted: bool = True) -> list[Pass]:
    """Reconcile once per entry of `rates`, `interval_s` apart, with each window's count drawn from a
    seeded Poisson process; the status and objects of one pass are what the next observes."""
    status: dict[str, Any] = {}
    actual: list[dict[str, Any]] = []
    passes = []
    prometheus = parse_spec(spec).workload.prometheus
    scale_up = prometheus.scale_up if prometheus is not None else None  # read as the shell reads it
    counts = window_counts(rates, interval_s, window_s, seed, scale_up[1] if scale_up else None)
    for k, (rate, (count, recent)) in enumerate(zip(rates, counts)):
        now = START_S + k * interval_s
        shorter = None if scale_up is None else (scale_up[0], scale_up[1], recent)
        outcome = reconcile(OWNER, Observed(spec, 1, status, actual, now), inputs,
                            live=live_input(mix, count, window_s, counted, shorter), drain_s=drain_s)
        status = merge_patch(status, status_merge_patch(status, outcome.status))
        if outcome.desired is not None:
            actual = ready(outcome.desired)
        running = {o["metadata"]["labels"][OPTION_LABEL]: o["spec"]["replicas"] for o in actual
                   if o["kind"] == "Deployment" and OPTION_LABEL in (o["metadata"].get("labels") or {})}
        passes.append(Pass(now, rate, count, outcome, running))
    return passes
