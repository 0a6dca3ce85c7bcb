"""Helpers shared by the benchmarks: where the paper's public data is, and table printing."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The small derived inputs the benches need, shipped with provenance in bench/data/README.md.
PAPER_DATA = ROOT / "bench" / "data"


def require_paper_data() -> Path:
    """The paper's data folder, or exit with a clear message."""
    if not PAPER_DATA.is_dir():
        sys.exit(f"paper data not found at {PAPER_DATA} (bench/data/ in the repository)")
    return PAPER_DATA


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """Print rows as an aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
