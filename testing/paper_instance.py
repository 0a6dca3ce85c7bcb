"""The Mélange paper's size of solver instance, as ILP items: 4 GPU types at the paper's prices, the
Arena trace's 10 x 6 size mix and the public Llama-2-7B profiles (L4 and A10G cannot serve inputs over
2000 tokens). Shared by the solver's tests and bench/solver_speed.py."""
from __future__ import annotations

import json
from pathlib import Path

from melange.solver.ilp import Item, OptionSpec

PAPER_PRICES = {"L4": 0.70, "A10G": 1.01, "A100": 3.67, "H100": 7.516}  # $/h, the paper's Table 3


def paper_instance(rate: float, early_profiles: Path) -> tuple[list[Item], list[OptionSpec]]:
    """Items at `rate` req/s over the Arena mix, one option per GPU type; `early_profiles` is the
    reference data's early-profiles folder."""
    profiles = json.loads((early_profiles / "llama2-7b_tputs_2024-02-22.json").read_text())["gpu_info"]
    share = json.loads((early_profiles / "arena_distribution_from_trace.json").read_text())["arena_10x6"]["share"]
    items = []
    for i, row in enumerate(share):
        for j, p in enumerate(row):
            seconds = []
            for name in PAPER_PRICES:
                table = profiles[name]["tputs"]
                value = table[i][j] if i < len(table) and j < len(table[i]) else 0
                seconds.append(1 / value if value > 0 else None)
            if p > 0 and any(s is not None for s in seconds):
                items.append(Item(f"{i},{j}", rate * p, tuple(seconds)))
    return items, [OptionSpec(name, price) for name, price in PAPER_PRICES.items()]
