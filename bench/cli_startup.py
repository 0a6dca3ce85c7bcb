"""Whole-process time of `melange` commands on the shipped example (start-up + import + work).

    python bench/cli_startup.py [--runs 15]

Prints the median and the fastest run per command; the solve itself is the ILP's own wall time,
which the table output reports.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, print_table

MELANGE = Path(sys.executable).with_name("melange")
BUNDLE = ROOT / "examples" / "arena-llama2-7b" / "bundle.yaml"
COMMANDS = {
    "melange --help": ["--help"],
    "melange solve BUNDLE": ["solve", str(BUNDLE)],
    "melange solve BUNDLE --output json": ["solve", str(BUNDLE), "--output", "json"],
    "melange solve --model llama-3-8b --gpus l4,a10g (catalog)": None,  # filled in main (needs a workload file)
    "melange sweep BUNDLE --rates 1,2,4,8,16,32 (6 solves)": ["sweep", str(BUNDLE), "--rates", "1,2,4,8,16,32"],
    "melange profile estimate --model llama-3-8b --gpu l4": ["profile", "estimate", "--model", "llama-3-8b",
                                                            "--gpu", "l4", "--tpot-ms", "120"],
}


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Seconds per run of `melange argv`, output discarded."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(MELANGE), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    args = parser.parse_args()
    COMMANDS["melange solve --model llama-3-8b --gpus l4,a10g (catalog)"] = [
        "solve", "--model", "llama-3-8b", "--gpus", "l4,a10g", "--workload",
        str(ROOT / "examples" / "arena-llama2-7b" / "workload.yaml")]
    rows = []
    for label, argv in COMMANDS.items():
        times = wall_times(argv, args.runs)
        rows.append([label, f"{1000 * statistics.median(times):.0f} ms", f"{1000 * min(times):.0f} ms"])
    print_table(["command (whole process)", "median", "fastest"], rows)


if __name__ == "__main__":
    main()
