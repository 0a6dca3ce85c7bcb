"""Reproduce the Mélange paper's allocation tables (Griggs et al. 2024, Appendix C, Tables 3-8)
from the public data shipped in bench/data/ (provenance in bench/data/README.md).

Public inputs exist only for Table 3 (Arena, 120 ms TPOT): the Feb-2024 Llama-2-7B profiles of
L4/A10G/A100/H100 (6 input rows for L4 and A10G, so the 6x6 grid up to 2000 tokens), the Arena
request sizes (lmsys-chat-1m trace) and the paper's prices (Table 1). The paper's own profiles
were never published, so rows other than rates 1 and 4 are expected to differ.

Usage: python bench/reproduce_paper.py [--solver highs|cbc]
"""
from __future__ import annotations

import argparse
import csv
import json

from common import print_table, require_paper_data

from melange.solver.buckets import BucketGrid
from melange.solver.ilp import SOLVERS, IlpSettings
from melange.solver.options import GpuOption
from melange.solver.problem import match_profiles
from melange.solver.profiles import Profile
from melange.solver.solve import solve
from melange.solver.workload import make_workload

GPUS = ("L4", "A10G", "A100", "H100")
UNREPRODUCIBLE = {
    4: "PubMed trace and the paper's long-context profiles are not public",
    5: "needs PubMed (20% of the mix) and long-context profiles, not public",
    6: "no public profiles at the 40 ms TPOT SLO",
    7: "no public profiles at 40 ms, no PubMed trace",
    8: "no public profiles at 40 ms, no PubMed trace",
}


def arena_problem(rate: float):
    """Table 3's setting on the public data: 6x6 grid, Arena mix, early profiles, paper prices."""
    data = require_paper_data()
    profiles = json.loads((data / "early-profiles" / "llama2-7b_tputs_2024-02-22.json").read_text())["gpu_info"]
    share = json.loads((data / "early-profiles" / "arena_distribution_from_trace.json").read_text())["arena_6x6"]
    prices = {row["gpu"]: float(row["on_demand_usd_per_hour"]) for row in
              csv.DictReader((data / "paper-tables" / "gpu_specs_prices_table1.csv").read_text().splitlines())}
    edges = (25, 100, 250, 500, 1000, 2000)
    grid = BucketGrid(edges, edges)
    workload = make_workload(rate, grid, share["share"], "arena_6x6")
    options = [GpuOption(name=g, price_per_hour=_price(prices, g)) for g in GPUS]
    rows = [Profile("llama-2-7b", g, grid, tuple(tuple(v if v > 0 else None for v in r[:6])
                                                 for r in profiles[g]["tputs"][:6]),
                    provenance={"source": "measured"}) for g in GPUS]
    return match_profiles(workload, options, rows)


def _price(prices: dict[str, float], gpu: str) -> float:
    for name, price in prices.items():
        if name.replace("-", "").upper().startswith(gpu.upper()):
            return price
    raise KeyError(gpu)


def paper_rows() -> dict[tuple[int, float, str], dict[str, str]]:
    path = require_paper_data() / "paper-tables" / "allocations_tables3-8.csv"
    return {(int(r["table"]), float(r["rate_req_s"]), r["solver"]): r
            for r in csv.DictReader(path.read_text().splitlines())}


def _mix(counts: dict[str, int]) -> str:
    return " + ".join(f"{n}x{g}" for g, n in counts.items() if n) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--solver", choices=SOLVERS, default="highs", help="MIP solver")
    args = parser.parse_args()
    paper = paper_rows()
    print("Table 3: Arena, Llama-2-7B, mean TPOT 120 ms, slice factor 8 (ours: public early profiles, 6x6 grid)\n")
    rows = []
    for rate in (1, 2, 4, 8, 16, 32):
        report = solve(arena_problem(rate), IlpSettings(slice_factor=8, solver=args.solver))
        ours = report.allocation
        row = paper[(3, float(rate), "Melange")]
        theirs = {g: int(row[g]) for g in GPUS}
        same = "yes" if theirs == ours.replicas else "no"
        h100 = report.single_type["H100"]
        paper_h100 = float(paper[(3, float(rate), "H100-only")]["cost_usd_per_hour"])
        rows.append([rate, _mix(ours.replicas), f"{ours.cost_per_hour:.3f}", _mix(theirs),
                     f"{float(row['cost_usd_per_hour']):.3f}", same,
                     f"{report.savings_percent(h100):.2f}", f"{100 * (paper_h100 - float(row['cost_usd_per_hour'])) / paper_h100:.2f}",
                     f"{report.savings_percent(report.best_single[1]):.2f} ({report.best_single[0]})",
                     f"{1000 * ours.wall_time_s:.0f}"])
    print_table(["rate", "ours", "$/h", "paper", "$/h", "same", "vs H100 %", "paper vs H100 %",
                 "vs best single %", "solve ms"], rows)
    print("\nSingle-type baselines at rates 1 and 4 (ours / paper, $/h):")
    base_rows = []
    for rate in (1, 4):
        report = solve(arena_problem(rate), IlpSettings(slice_factor=8, solver=args.solver))
        for g in GPUS:
            theirs = paper[(3, float(rate), f"{g}-only")]
            base_rows.append([rate, f"{g}-only", report.single_type_replicas[g], f"{report.single_type[g]:.3f}",
                              theirs[g], theirs["cost_usd_per_hour"], f"{report.savings_percent(report.single_type[g]):.2f}",
                              theirs["savings_pct_vs_this_baseline"]])
    print_table(["rate", "baseline", "ours n", "ours $/h", "paper n", "paper $/h", "ours saving %", "paper saving %"],
                base_rows)
    print("\nNot reproducible from public data:")
    for table, why in UNREPRODUCIBLE.items():
        print(f"  Table {table}: {why}")


if __name__ == "__main__":
    main()
