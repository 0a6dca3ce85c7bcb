"""The request-size grid: input-length x output-length buckets, given by their upper edges in tokens."""
from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melange.solver.checks import integer, require_keys, require_mapping, sequence
from melange.solver.errors import InputError

# Griggs et al. 2024, Sec. 6.1 / Fig. 5: the paper's 10 x 6 grid (upper edges, tokens).
PAPER_INPUT_EDGES = (25, 100, 250, 500, 1000, 2000, 4000, 8000, 12000, 16000)
PAPER_OUTPUT_EDGES = (25, 100, 250, 500, 1000, 2000)


@dataclass(frozen=True)
class BucketGrid:
    """Input and output upper edges; bucket (i, j) holds requests with input in (in[i-1], in[i]] and
    output in (out[j-1], out[j]] (the first bucket starts at 0 inclusive).

    `indexed` grids come from formats that carry no edges (the reference JSON): buckets are known by
    index only and labelled so.
    """

    input_edges: tuple[int, ...]
    output_edges: tuple[int, ...]
    indexed: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.input_edges), len(self.output_edges)

    def input_bucket(self, tokens: int) -> int | None:
        """Index of the input bucket holding `tokens`, or None beyond the last edge."""
        index = bisect.bisect_left(self.input_edges, tokens)
        return index if index < len(self.input_edges) else None

    def output_bucket(self, tokens: int) -> int | None:
        """Index of the output bucket holding `tokens`, or None beyond the last edge."""
        index = bisect.bisect_left(self.output_edges, tokens)
        return index if index < len(self.output_edges) else None

    def input_label(self, i: int) -> str:
        """Human label of input bucket i, e.g. 'in(25,100]'."""
        if self.indexed:
            return f"in#{i}"
        low = self.input_edges[i - 1] if i else 0
        return f"in({low},{self.input_edges[i]}]"

    def output_label(self, j: int) -> str:
        """Human label of output bucket j, e.g. 'out(0,25]'."""
        if self.indexed:
            return f"out#{j}"
        low = self.output_edges[j - 1] if j else 0
        return f"out({low},{self.output_edges[j]}]"

    def label(self, i: int, j: int) -> str:
        """Human label of bucket (i, j)."""
        return f"{self.input_label(i)} {self.output_label(j)}"

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form read back by `grid_from_dict`."""
        return {"input_edges": list(self.input_edges), "output_edges": list(self.output_edges)}


def indexed_grid(rows: int, columns: int) -> BucketGrid:
    """A grid known by bucket index only (edges 1..n stand in for the unknown token edges)."""
    return BucketGrid(tuple(range(1, rows + 1)), tuple(range(1, columns + 1)), indexed=True)


def paper_grid() -> BucketGrid:
    """The 10 x 6 grid of the Mélange paper."""
    return BucketGrid(PAPER_INPUT_EDGES, PAPER_OUTPUT_EDGES)


def _edges(value: Any, where: str) -> tuple[int, ...]:
    edges = tuple(integer(v, f"{where}[{k}]", minimum=1) for k, v in enumerate(sequence(value, where)))
    for k in range(1, len(edges)):
        if edges[k] <= edges[k - 1]:
            raise InputError(f"{where}[{k}]", f"edges must increase strictly, got {edges[k - 1]} then {edges[k]}")
    return edges


def grid_from_dict(data: Any, where: str) -> BucketGrid:
    """Read a grid from `{input_edges: [...], output_edges: [...]}` (upper edges, tokens, increasing)."""
    mapping: Mapping[str, Any] = require_mapping(data, where)
    require_keys(mapping, where, ["input_edges", "output_edges"])
    return BucketGrid(_edges(mapping["input_edges"], f"{where}.input_edges"),
                      _edges(mapping["output_edges"], f"{where}.output_edges"))


def check_same_grid(expected: BucketGrid, actual: BucketGrid, where: str) -> None:
    """Raise unless `actual` has the same edges as `expected` (profiles and workload must agree)."""
    if expected.indexed or actual.indexed:
        if expected.shape != actual.shape:
            raise InputError(where, f"grid shape {actual.shape} does not match the workload's {expected.shape}")
        return
    if (expected.input_edges, expected.output_edges) != (actual.input_edges, actual.output_edges):
        raise InputError(where, f"grid {actual.to_dict()} does not match the workload's grid {expected.to_dict()}")
