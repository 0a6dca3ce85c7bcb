"""The reference implementation's JSON input (github.com/tyler-griggs/melange-release,
`melange/config/example.json`), read unchanged so existing Mélange users can bring their files.

Keys: `gpu_info {name: {cost, tputs}}`, `workload_distribution`, `total_request_rate`,
`slice_factor`. Matrices are [input bucket][output bucket]; a throughput <= 0 or a missing entry
(a short row) means "cannot serve". The format has no bucket edges, so buckets are known by index.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melange.solver.buckets import indexed_grid
from melange.solver.checks import integer, number, require_keys, require_mapping, sequence
from melange.solver.errors import InputError
from melange.solver.options import GpuOption
from melange.solver.problem import Problem, match_profiles
from melange.solver.profiles import Profile
from melange.solver.workload import make_workload

REFERENCE_KEYS = frozenset({"gpu_info", "workload_distribution", "total_request_rate", "slice_factor"})


def is_reference_format(data: Any) -> bool:
    """True when `data` has the reference format's top-level keys."""
    return isinstance(data, Mapping) and REFERENCE_KEYS <= set(data)


def problem_from_reference(data: Any, where: str) -> tuple[Problem, int]:
    """Read a reference-format document into a Problem and its slice factor."""
    mapping = require_mapping(data, where)
    unknown = sorted(set(mapping) - REFERENCE_KEYS)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", "unknown key", ", ".join(sorted(REFERENCE_KEYS)))
    matrix = sequence(mapping["workload_distribution"], f"{where}.workload_distribution")
    rows = [sequence(row, f"{where}.workload_distribution[{i}]") for i, row in enumerate(matrix)]
    columns = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != columns:
            raise InputError(f"{where}.workload_distribution[{i}]",
                             f"has {len(row)} entries, row 0 has {columns}", "a rectangular matrix")
    grid = indexed_grid(len(rows), columns)
    workload = make_workload(mapping["total_request_rate"], grid, rows, where,
                             rate_source=f"given in {where}.total_request_rate")
    slice_factor = integer(mapping["slice_factor"], f"{where}.slice_factor", minimum=1)
    gpu_info = require_mapping(mapping["gpu_info"], f"{where}.gpu_info")
    if not gpu_info:
        raise InputError(f"{where}.gpu_info", "no GPUs given", "at least one GPU")
    options, profiles = [], []
    for name, entry in gpu_info.items():
        here = f"{where}.gpu_info.{name}"
        # Forks add per-GPU keys (e.g. max_count); refusing them beats solving without a limit the user set.
        require_keys(require_mapping(entry, here), here, ["cost", "tputs"])
        cost = number(entry["cost"], f"{here}.cost", minimum=0, strict_minimum=True)
        options.append(GpuOption(name=str(name), price_per_hour=cost))
        profiles.append(Profile(model="unknown", gpu=str(name), grid=grid,
                                max_rps=_throughputs(entry["tputs"], grid.shape, f"{here}.tputs"),
                                provenance={"source": "reference", "format": "melange-release JSON"}))
    return match_profiles(workload, options, profiles, f"{where}.gpu_info"), slice_factor


def _throughputs(value: Any, shape: tuple[int, int], where: str) -> tuple[tuple[float | None, ...], ...]:
    """Rows may be short (missing = cannot serve) but never longer than the distribution: a longer
    table belongs to another grid, and cutting it would solve on the wrong buckets."""
    table = sequence(value, where)
    if len(table) > shape[0]:
        raise InputError(where, f"has {len(table)} rows, the workload_distribution {shape[0]}",
                         f"at most {shape[0]} rows of at most {shape[1]} entries")
    result = []
    for i in range(shape[0]):
        row = sequence(table[i], f"{where}[{i}]", nonempty=False) if i < len(table) else []
        if len(row) > shape[1]:
            raise InputError(f"{where}[{i}]", f"has {len(row)} entries, the workload_distribution rows {shape[1]}",
                             f"at most {shape[1]} entries")
        cells: list[float | None] = []
        for j in range(shape[1]):
            if j >= len(row) or row[j] is None:
                cells.append(None)
                continue
            rate = number(row[j], f"{where}[{i}][{j}]")
            cells.append(rate if rate > 0 else None)
        result.append(tuple(cells))
    return tuple(result)
