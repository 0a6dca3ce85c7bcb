"""Prometheus histograms to solver-grid distributions.

Mass inside one histogram bucket (a, b] is assumed spread uniformly over the integer token counts
a+1..b, and split between solver buckets by how many of those integers each holds. The "+Inf"
bucket, which has no upper edge, is placed just beyond the last finite edge. Mass beyond the
solver grid's last edge is reported as `beyond`, never silently folded into the last bucket.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rebinned:
    """Counts per solver bucket, plus the count beyond the grid's last edge."""

    counts: tuple[float, ...]
    beyond: float


def cumulative_to_intervals(cumulative: Mapping[float, float]) -> list[tuple[float, float, float]]:
    """Turn cumulative `{le: count}` (Prometheus `_bucket` series) into (low, high, count) intervals.

    Decreasing cumulative counts (a reset seen between buckets) are clipped to zero."""
    edges = sorted(cumulative)
    intervals, previous_edge, previous_count = [], 0.0, 0.0
    for edge in edges:
        count = cumulative[edge]
        intervals.append((previous_edge, edge, max(0.0, count - previous_count)))
        previous_edge, previous_count = edge, max(previous_count, count)
    return intervals


def overlap_fraction(low: float, high: float, bucket_low: float, bucket_high: float) -> float:
    """Share of the integers in (low, high] that also lie in (bucket_low, bucket_high]."""
    if math.isinf(high):
        return 1.0 if bucket_low <= low < bucket_high else 0.0
    width = math.floor(high) - math.floor(low)
    if width <= 0:
        return 0.0
    shared = min(math.floor(high), math.floor(bucket_high)) - max(math.floor(low), math.floor(bucket_low))
    return max(0, shared) / width


def rebin(intervals: Sequence[tuple[float, float, float]], edges: Sequence[int]) -> Rebinned:
    """Spread interval counts onto solver buckets with upper `edges` (first bucket starts at 0)."""
    counts = [0.0] * len(edges)
    beyond = 0.0
    lows = [0, *edges[:-1]]
    for low, high, count in intervals:
        if count <= 0:
            continue
        placed = 0.0
        for k, (bucket_low, bucket_high) in enumerate(zip(lows, edges)):
            share = overlap_fraction(low, high, bucket_low, bucket_high)
            counts[k] += count * share
            placed += share
        beyond += count * max(0.0, 1.0 - placed)
    return Rebinned(tuple(counts), beyond)


def lower_edge(upper: float, source_edges: Sequence[float]) -> float:
    """The edge below `upper` in `source_edges` (0 for the first; the last edge for +Inf)."""
    below = [e for e in source_edges if e < upper]
    return float(max(below)) if below else 0.0


def rebin_joint(cells: Mapping[tuple[float, float], float], source_edges: Sequence[float],
                input_edges: Sequence[int], output_edges: Sequence[int]) -> tuple[list[list[float]], float]:
    """Rebin a joint counter of non-cumulative cells `{(input_le, output_le): count}`, each cell
    (previous source edge, le] on both axes, onto a solver grid; returns the matrix and the count
    beyond the grid."""
    input_low = {i: lower_edge(i, source_edges) for i, _ in cells}
    output_low = {o: lower_edge(o, source_edges) for _, o in cells}
    matrix = [[0.0] * len(output_edges) for _ in input_edges]
    total_placed = 0.0
    total = 0.0
    for (input_le, output_le), count in cells.items():
        if count <= 0:
            continue
        total += count
        rows = rebin([(input_low[input_le], input_le, 1.0)], input_edges).counts
        columns = rebin([(output_low[output_le], output_le, 1.0)], output_edges).counts
        for i, row_share in enumerate(rows):
            if row_share:
                for j, column_share in enumerate(columns):
                    if column_share:
                        matrix[i][j] += count * row_share * column_share
                        total_placed += count * row_share * column_share
    return matrix, max(0.0, total - total_placed)
