"""Median solve time of the Mélange ILP with each MIP solver.

(a) the paper's size: 4 GPU types, 10 x 6 buckets, slice factor 8, rates 1-64 req/s, on the
    Arena mix with the public Llama-2-7B profiles (L4/A10G cannot serve inputs > 2000 tokens);
(b) 16 options x 100 buckets x slice factor 16, random profiles;
(c) a fleet's size: 50 options x 200 buckets x slice factor 16, random profiles, with the status
    (optimal: proven; feasible: the gap to the LP bound) and a 10 s time limit.

Usage: python bench/solver_speed.py [--runs 7] [--solvers highs,cbc] [--parts a,b,c]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from common import print_table, require_paper_data

from melange.solver.ilp import SOLVERS, IlpSettings, Item, OptionSpec, solve_ilp
from melange.testing.paper_instance import paper_instance

def large_instance(seed: int, options_count: int = 16, buckets: int = 100) -> tuple[list[Item], list[OptionSpec]]:
    rng = random.Random(seed)
    options = [OptionSpec(f"gpu{g}", round(rng.uniform(0.4, 12), 2)) for g in range(options_count)]
    items = []
    for k in range(buckets):
        size = rng.uniform(0.2, 1.0)  # bigger requests: every option slower
        seconds = tuple(None if rng.random() < 0.15 else 1 / (size * rng.uniform(0.05, 40)) for _ in options)
        if all(s is None for s in seconds):
            seconds = (1.0,) + seconds[1:]
        items.append(Item(f"b{k}", rng.uniform(0.05, 1.0), seconds))
    return items, options


def median_ms(items, options, settings, runs: int) -> tuple[float, str]:
    times, status = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        solution = solve_ilp(items, options, settings)
        times.append(1000 * (time.perf_counter() - started))
        status = solution.status if solution.gap in (None, 0.0) else f"{solution.status}, gap {100 * solution.gap:.2f}%"
    return statistics.median(times), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="solves per instance (the median is shown)")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="MIP solvers, comma-separated")
    parser.add_argument("--parts", default="a,b,c", help="instances: a (paper size), b (16x100), c (fleet 50x200)")
    args = parser.parse_args()
    solvers, parts = args.solvers.split(","), args.parts.split(",")
    rows = []
    if "a" in parts:
        for rate in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64):
            items, options = paper_instance(rate, require_paper_data() / "early-profiles")
            row = [f"(a) paper 4x60 S=8, rate {rate}"]
            for solver in solvers:
                ms, status = median_ms(items, options, IlpSettings(slice_factor=8, solver=solver), args.runs)
                row.append(f"{ms:.1f} ms ({status})")
            rows.append(row)
    if "b" in parts:
        for seed in (1, 2, 3):
            items, options = large_instance(seed)
            row = [f"(b) 16x100 S=16, seed {seed}"]
            for solver in solvers:
                ms, status = median_ms(items, options, IlpSettings(slice_factor=16, solver=solver, time_limit_s=60),
                                       max(3, args.runs // 2))
                row.append(f"{ms:.1f} ms ({status})")
            rows.append(row)
    if "c" in parts:
        for seed in (1, 2, 3):
            items, options = large_instance(seed, 50, 200)
            row = [f"(c) fleet 50x200 S=16, seed {seed}"]
            for solver in solvers:
                ms, status = median_ms(items, options, IlpSettings(slice_factor=16, solver=solver, time_limit_s=10),
                                       max(3, args.runs // 2))
                row.append(f"{ms:.1f} ms ({status})")
            rows.append(row)
    print_table(["instance"] + [f"{s} median" for s in solvers], rows)


if __name__ == "__main__":
    main()
