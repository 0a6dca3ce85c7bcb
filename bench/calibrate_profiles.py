"""How well estimated profiles stand in for measured ones: the estimator against the Mélange
authors' measured Llama-2-7B tables (L4, A10G, A100-80GB, H100; vLLM 0.2.7, mean TPOT 120 ms).

1. Per GPU, the median and p90 of |estimate - measured| / measured over the 6x6 grid, with the
   shipped constants, with constants fitted on all four GPUs, and leave-one-GPU-out (fitted on the
   other three, tested on the fourth: how well it predicts a GPU it has not seen).
2. Cost: the allocation solved on estimated profiles at rates 1-32 on the Arena mix, against the
   optimum solved on the measured profiles, in two ways. "Same split": the estimated split of
   every bucket kept, each GPU type's replicas recomputed on the measured profiles. "Re-routed":
   the estimated replicas kept as a floor and the split re-solved on the measured profiles,
   adding replicas only where needed (what the operator does once live metrics replace the
   estimate). "Same split, 15% headroom": solved on the estimates with target utilisation 0.85,
   then costed like "same split" (how to plan on estimates alone).

Rows 7-10 of the A100/H100 tables (inputs 4,000-16,000 tokens by the paper's grid) are left out:
Llama-2-7B's 4,096-token context cannot hold them, so their edges are doubtful.

Usage: python bench/calibrate_profiles.py
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from common import print_table
from reproduce_paper import GPUS, arena_problem

from melange.solver.profiling.catalog import shipped_catalog
from melange.solver.profiling.estimate import estimate_profile
from melange.solver.ilp import IlpSettings
from melange.solver.profiling.perf_fit import Observation, fit_constants, relative_errors
from melange.solver.profiling.perf_model import FITTED_CONSTANTS, PerfConstants
from melange.solver.problem import Problem
from melange.solver.profiles import Profile, Slo
from melange.solver.solve import solve

CATALOG = shipped_catalog()
MODEL = CATALOG.model("llama-2-7b")
CATALOG_NAMES = {"L4": "L4", "A10G": "A10G", "A100": "A100-80GB", "H100": "H100-SXM"}
SLO = Slo(tpot_ms=120.0)
RATES = (1, 2, 4, 8, 16, 32)
HEADROOM_UTILISATION = 0.85


def observations(measured: Problem) -> dict[str, Observation]:
    """The measured tables as fitting observations (every servable cell)."""
    found = {}
    for profile in measured.profiles:
        grid = profile.grid
        cells = [(grid.input_edges[i], grid.output_edges[j], rate) for i, row in enumerate(profile.max_rps)
                 for j, rate in enumerate(row) if rate]
        inputs, outputs, rates = zip(*cells)
        found[profile.gpu] = Observation(CATALOG.gpu(CATALOG_NAMES[profile.gpu]), MODEL, inputs, outputs, rates,
                                         SLO.tpot_s)
    return found


def error_row(label: str, errors: np.ndarray) -> list[str]:
    return [label, f"{100 * np.median(errors):.0f}%", f"{100 * np.percentile(errors, 90):.0f}%"]


def estimated_problem(measured: Problem, constants: PerfConstants) -> Problem:
    """The same workload and options with profiles estimated from specs instead of measured."""
    grid = measured.workload.grid
    profiles = []
    for profile in measured.profiles:
        estimate = estimate_profile(MODEL, CATALOG.gpu(CATALOG_NAMES[profile.gpu]), SLO, grid, constants=constants)
        profiles.append(Profile("llama-2-7b", profile.gpu, grid, estimate.max_rps, SLO, 1, estimate.provenance))
    return Problem(measured.workload, measured.options, tuple(profiles))


def cost_on_measured(report, measured: Problem) -> float:
    """$/h of serving the estimated allocation's split with the replicas the measured profiles need."""
    profiles = {o.name: p for o, p in zip(measured.options, measured.profiles)}
    prices = {o.name: o.replica_price for o in measured.options}
    load = {name: 0.0 for name in profiles}
    for split in report.allocation.splits:
        for name, share in split.shares.items():
            if share <= 0:
                continue
            i, j = split.index
            rate = profiles[name].max_rps[i][j]
            if rate is None:
                return math.inf
            load[name] += split.rate * share / rate
    return sum(prices[name] * math.ceil(value - 1e-9) for name, value in load.items())


def rerouted_cost(report, measured: Problem, settings: IlpSettings) -> float:
    """$/h of the cheapest allocation on the measured profiles that keeps the estimated replicas."""
    floors = report.allocation.replicas
    options = tuple(dataclasses.replace(o, min_replicas=floors.get(o.name, 0)) for o in measured.options)
    return solve(Problem(measured.workload, options, measured.profiles), settings,
                 compare_modes=False).allocation.cost_per_hour


def main() -> None:
    measured = arena_problem(1)
    found = observations(measured)
    shipped = PerfConstants()
    fitted = fit_constants(list(found.values()), start=shipped)
    print("Estimate vs measured max rates, Llama-2-7B, mean TPOT 120 ms, 6x6 grid (|error| per cell)\n")
    rows = []
    for gpu in GPUS:
        held_out = fit_constants([o for g, o in found.items() if g != gpu], start=shipped)
        rows.append([gpu] + error_row("", relative_errors(shipped, found[gpu]))[1:]
                    + error_row("", relative_errors(fitted, found[gpu]))[1:]
                    + error_row("", relative_errors(held_out, found[gpu]))[1:])
    print_table(["GPU", "shipped: median", "p90", "fit on all: median", "p90", "leave-one-out: median", "p90"],
                rows)
    print("\nconstants: " + ", ".join(f"{name} shipped {getattr(shipped, name):.3g} / fitted "
                                      f"{getattr(fitted, name):.3g}" for name in FITTED_CONSTANTS))
    print("\nArena mix, paper prices, slice factor 8: allocation from estimated profiles, costed on the measured "
          "ones\n")
    rows = []
    settings = IlpSettings(slice_factor=8)
    for rate in RATES:
        measured = arena_problem(rate)
        optimum = solve(measured, settings).allocation
        estimated = solve(estimated_problem(measured, shipped), settings)
        same_split = cost_on_measured(estimated, measured)
        padded = cost_on_measured(solve(estimated_problem(measured, shipped),
                                        dataclasses.replace(settings, target_utilisation=HEADROOM_UTILISATION)),
                                  measured)
        rerouted = rerouted_cost(estimated, measured, settings)
        mix = " + ".join(f"{n}x{g}" for g, n in estimated.allocation.replicas.items() if n)
        best = optimum.cost_per_hour
        rows.append([rate, f"{best:.2f}", mix, f"{estimated.allocation.cost_per_hour:.2f}",
                     f"{same_split:.2f}", f"{100 * (same_split / best - 1):+.1f}%",
                     f"{rerouted:.2f}", f"{100 * (rerouted / best - 1):+.1f}%",
                     f"{padded:.2f}", f"{100 * (padded / best - 1):+.1f}%"])
    print_table(["rate", "measured optimum $/h", "estimated mix", "estimated $/h", "same split $/h", "vs optimum",
                 "re-routed $/h", "vs optimum", "15% headroom $/h", "vs optimum"], rows)


if __name__ == "__main__":
    main()
