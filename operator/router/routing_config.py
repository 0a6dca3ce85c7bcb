"""Reads and checks the router's routing-table file (written by melange.solver.routing)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melange.solver.buckets import BucketGrid, grid_from_dict
from melange.solver.checks import require_mapping, sequence, text
from melange.solver.errors import InputError
from melange.solver.inputs import load_document


@dataclass(frozen=True)
class RoutingTable:
    """Pools with their upstream URLs and, per input bucket (and optionally per (input, output)
    bucket), each pool's share of requests; `version` names the table (the operator writes a hash of
    its content, and waits until every router serves it)."""

    grid: BucketGrid
    pools: Mapping[str, tuple[str, ...]]
    input_weights: tuple[Mapping[str, float], ...]
    joint_weights: tuple[tuple[Mapping[str, float], ...], ...] | None = None
    version: str = ""

    def weights(self, input_bucket: int, output_bucket: int | None) -> Mapping[str, float]:
        """The pool weights for a request of these buckets (joint when known, else per input bucket)."""
        if self.joint_weights is not None and output_bucket is not None:
            return self.joint_weights[input_bucket][output_bucket]
        return self.input_weights[input_bucket]


def _weights(value: Any, pools: Mapping[str, Any], where: str) -> dict[str, float]:
    mapping = require_mapping(value, where)
    weights = {}
    for name, weight in mapping.items():
        if name not in pools:
            raise InputError(f"{where}.{name}", "unknown pool", ", ".join(sorted(pools)))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise InputError(f"{where}.{name}", f"weight must be a finite number >= 0, got {weight!r}")
        if weight > 0:
            weights[name] = float(weight)
    return weights


def table_from_dict(data: Any, where: str) -> RoutingTable:
    """Check a routing-table document: every pool has http(s) URLs, weights name known pools."""
    mapping = require_mapping(data, where)
    grid = grid_from_dict(mapping.get("grid"), f"{where}.grid")
    pools_data = require_mapping(mapping.get("pools"), f"{where}.pools")
    if not pools_data:
        raise InputError(f"{where}.pools", "no pools")
    pools = {}
    for name, entry in pools_data.items():
        urls = sequence(require_mapping(entry, f"{where}.pools.{name}").get("urls"), f"{where}.pools.{name}.urls")
        checked = tuple(text(u, f"{where}.pools.{name}.urls[{k}]").rstrip("/") for k, u in enumerate(urls))
        for k, url in enumerate(checked):
            if not url.startswith(("http://", "https://")):
                raise InputError(f"{where}.pools.{name}.urls[{k}]", f"not an http(s) URL: {url!r}")
        pools[str(name)] = checked
    rows, columns = grid.shape
    input_weights = tuple(_weights(w, pools, f"{where}.input_weights[{i}]")
                          for i, w in enumerate(sequence(mapping.get("input_weights"), f"{where}.input_weights",
                                                         length=rows)))
    joint = None
    if mapping.get("joint_weights") is not None:
        joint = tuple(tuple(_weights(w, pools, f"{where}.joint_weights[{i}][{j}]")
                            for j, w in enumerate(sequence(row, f"{where}.joint_weights[{i}]", length=columns)))
                      for i, row in enumerate(sequence(mapping["joint_weights"], f"{where}.joint_weights", length=rows)))
    version = mapping.get("version", "")
    if not isinstance(version, str):
        raise InputError(f"{where}.version", f"expected a string, got {version!r}")
    return RoutingTable(grid, pools, input_weights, joint, version)


def load_table(path: Path) -> RoutingTable:
    """Read a routing-table file (JSON or YAML)."""
    return table_from_dict(load_document(Path(path)), str(path))
