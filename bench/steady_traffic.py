"""Moves the operator makes at steady Poisson traffic, and how fast it follows a real 30% step up:
the rate taken as exact (the rule before operator/core/noise.py) against the noise-aware rule.

The pure reconcile is driven pass by pass as the shell drives it (melange.testing.reconcile_passes):
the paper's Arena example (examples/operator/arena-llama2-7b.yaml) turned live, Prometheus windows
of 60 s to 10 min, a pass every `--interval` (60 s, the default reallocation.interval: windows longer
than that overlap) or one per window (`--interval 0`: independent windows), the default
minSavingsPercent 5 and cooldown 10m, Deployments ready one pass after they are asked for.

    moves/100   moves (scale-up or rebalance) per 100 passes at a steady rate, after `--warmup`
                passes, over `--seeds` seeds
    short       share of those passes whose Deployments cannot serve the true rate
    over        mean $/h of those passes' Deployments over the optimum for the true rate
    step        passes from a 30% step up until the Deployments serve the new rate, median / worst
                over the seeds: 1 is the first pass whose window holds traffic at the new rate, 0
                means what ran before already could; "never" gives the worst shortfall after 30 passes

Usage: python bench/steady_traffic.py [--windows 60,180,600] [--rates 2,4,6,10] [--interval 60]
                                      [--seeds 3] [--passes 100] [--warmup 10] [--margins 2,2,6]
                                      [--rules exact,noise]
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import yaml
from common import ROOT, print_table

from melange.operator.core import noise
from melange.operator.core.decision import cost_of, covers
from melange.operator.core.problem import build_problem, default_inputs, solver_settings
from melange.operator.core.spec import parse_spec
from melange.solver.solve import allocate
from melange.solver.workload import Workload
from melange.testing.reconcile_passes import prometheus_spec, run_passes

ARENA = ROOT / "examples" / "operator" / "arena-llama2-7b.yaml"
STEP = 1.3
HORIZON = 30  # passes watched after the step


@dataclass(frozen=True)
class Service:
    spec: dict
    mix: Workload
    interval_s: float
    window_s: float

    def problem(self, rate: float):
        return build_problem(parse_spec(self.spec), self.mix.with_rate(rate), default_inputs())

    def serves(self, replicas, rate: float) -> bool:
        parsed = parse_spec(self.spec)
        return covers(self.problem(rate), replicas, solver_settings(parsed), parsed.routing_mode)

    def capacity(self, replicas) -> float:
        """The highest rate of the mix the replicas serve (bisection, to 0.1%)."""
        low, high = 0.0, 1.0
        while self.serves(replicas, high):
            low, high = high, 2 * high
        while high - low > 1e-3 * high:
            low, high = ((low + high) / 2, high) if self.serves(replicas, (low + high) / 2) else (low, (low + high) / 2)
        return low


def steady(service: Service, rate: float, seeds: int, passes: int, warmup: int, counted: bool) -> tuple[float, ...]:
    """Moves per 100 passes after the warm-up, % of passes short of the true rate, mean % over its optimum."""
    parsed = parse_spec(service.spec)
    problem = service.problem(rate)
    best = allocate(problem, solver_settings(parsed), parsed.routing_mode).cost_per_hour
    moves, short, over = 0, 0, []
    for seed in range(seeds):
        run = run_passes(service.spec, default_inputs(), service.mix, [rate] * (warmup + passes), service.interval_s,
                         service.window_s, seed, counted=counted)
        for p in run[warmup:]:
            moves += p.moved
            short += not covers(problem, p.running, solver_settings(parsed), parsed.routing_mode)
            over.append(cost_of(problem, p.running) / best - 1)
    return 100.0 * moves / len(over), 100.0 * short / len(over), 100.0 * statistics.fmean(over)


def follow(service: Service, rate: float, seeds: int, warmup: int, counted: bool) -> str:
    """Passes from the step until the Deployments serve the new rate: median / worst over the seeds."""
    new = STEP * rate
    found, shortfalls = [], []
    for seed in range(seeds):
        run = run_passes(service.spec, default_inputs(), service.mix, [rate] * warmup + [new] * HORIZON,
                         service.interval_s, service.window_s, 1000 + seed, counted=counted)
        served = next((k for k, p in enumerate(run[warmup - 1:]) if service.serves(p.running, new)), None)
        if served is None:
            shortfalls.append(1 - service.capacity(run[-1].running) / new)
        else:
            found.append(served)
    median = f"{statistics.median(found):g}" if found else "-"
    worst = f"never (-{100 * max(shortfalls):.1f}%)" if shortfalls else f"{max(found)}"
    return f"{median} / {worst}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--windows", default="60,180,600", help="Prometheus windows, seconds")
    parser.add_argument("--rates", default="2,4,6,10", help="steady rates, req/s")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between passes (0: one window)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=100, help="steady passes counted per seed")
    parser.add_argument("--warmup", type=int, default=10, help="passes before counting (the first allocation)")
    parser.add_argument("--margins", default=None, help="size, scale-up and rebalance z (default: noise.MARGINS)")
    parser.add_argument("--rules", default="exact,noise", help="exact (the rate as read), noise (noise-aware)")
    args = parser.parse_args()
    if args.margins:
        size, scale_up, rebalance = (float(z) for z in args.margins.split(","))
        noise.MARGINS = noise.Margins(size, scale_up, rebalance)
    margins = noise.MARGINS
    print(f"noise-aware margins: size {margins.size_z:g}, scale-up {margins.scale_up_z:g}, "
          f"rebalance {margins.rebalance_z:g}; {args.seeds} seeds")
    arena = yaml.safe_load(ARENA.read_text())["spec"]
    rules = args.rules.split(",")
    headers = ["window", "interval", "req/s", "requests"] + [f"{rule}: {column}" for rule in rules
                                                              for column in ("moves/100", "short", "over", "step")]
    rows = []
    for window in (float(w) for w in args.windows.split(",")):
        interval = args.interval or window
        spec, mix = prometheus_spec(arena, window, interval)
        service = Service(spec, mix, interval, window)
        for rate in (float(r) for r in args.rates.split(",")):
            row: list[object] = [f"{window:g} s", f"{interval:g} s", f"{rate:g}", f"{rate * window:.0f}"]
            for counted in (rule == "noise" for rule in rules):
                moves, short, over = steady(service, rate, args.seeds, args.passes, args.warmup, counted)
                row += [f"{moves:.1f}", f"{short:.0f}%", f"{over:+.0f}%",
                        follow(service, rate, args.seeds, args.warmup, counted)]
            rows.append(row)
            print("  ".join(str(c) for c in row), flush=True)
    print()
    print_table(headers, rows)


if __name__ == "__main__":
    main()
