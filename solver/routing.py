"""The routing table: per input bucket (and optionally per (input, output) bucket), the share of
requests each GPU pool receives. The operator writes it from an allocation; the router enforces it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melange.solver.allocation import Allocation
from melange.solver.buckets import BucketGrid
from melange.solver.errors import InputError


TABLE_KEY = "routing.json"  # the file name (and ConfigMap key) the router reads a table from
# In the routers' acknowledgement ConfigMap, beside `<pod>: <version>`: `<pod>.in-flight` holds the pod's
# requests still in flight to pools its table no longer routes to, as JSON
# {"version": <the table it serves>, "pools": {<pool>: <requests>}} (pools with none left out).
IN_FLIGHT_SUFFIX = ".in-flight"


def routing_table(allocation: Allocation, grid: BucketGrid, pool_urls: Mapping[str, list[str] | str]) -> dict[str, Any]:
    """The routing-table document for `allocation`: input weights per input bucket (rate-weighted over
    output buckets in paper mode) and, in paper mode, joint weights per (input, output) bucket.
    Buckets without traffic route to every pool in proportion to its replicas."""
    names = [o.name for o in allocation.options if o.replicas > 0]
    missing = [n for n in names if n not in pool_urls]
    if missing:
        raise InputError("pool_urls", f"no URL for pool {missing[0]!r}", "one URL (or list) per option with replicas")
    rows, columns = grid.shape
    fallback = _normalise({o.name: float(o.replicas) for o in allocation.options if o.replicas > 0})
    input_mass: list[dict[str, float]] = [{} for _ in range(rows)]
    joint: list[list[dict[str, float] | None]] = [[None] * columns for _ in range(rows)]
    for split in allocation.splits:
        i = split.index[0]
        for name, share in split.shares.items():
            if share > 0:
                input_mass[i][name] = input_mass[i].get(name, 0.0) + share * split.rate
        if len(split.index) == 2:
            joint[i][split.index[1]] = _normalise(dict(split.shares))
    document: dict[str, Any] = {
        "grid": grid.to_dict(),
        "pools": {name: {"urls": [urls] if isinstance(urls, str) else list(urls)}
                  for name, urls in pool_urls.items() if name in names},
        "input_weights": [_normalise(mass) or fallback for mass in input_mass],
        "mode": allocation.mode,
    }
    if allocation.mode == "paper":
        document["joint_weights"] = [[cell or _normalise(input_mass[i]) or fallback for cell in row]
                                     for i, row in enumerate(joint)]
    return document


def _normalise(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(v for v in weights.values() if v > 0)
    return {k: round(v / total, 9) for k, v in sorted(weights.items()) if v > 0} if total > 0 else {}
