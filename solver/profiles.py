"""Performance profiles: per (model, GPU option, SLO), the highest request rate one replica sustains
for each bucket within the SLO. A bucket the replica cannot serve is None, never zero."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from melange.solver.buckets import BucketGrid, grid_from_dict
from melange.solver.checks import integer, number, require_keys, require_mapping, sequence, text
from melange.solver.errors import InputError

PROVENANCE_SOURCES = ("measured", "estimated", "reference")


@dataclass(frozen=True)
class Slo:
    """Latency objective: mean time per output token and/or time to first token, in milliseconds.

    `percentile` None means the mean (as in the Mélange paper); e.g. 90 means p90.
    """

    tpot_ms: float | None = None
    ttft_ms: float | None = None
    percentile: float | None = None

    @property
    def tpot_s(self) -> float | None:
        return None if self.tpot_ms is None else self.tpot_ms / 1e3

    @property
    def ttft_s(self) -> float | None:
        return None if self.ttft_ms is None else self.ttft_ms / 1e3

    def describe(self) -> str:
        stat = "mean" if self.percentile is None else f"p{self.percentile:g}"
        parts = [f"{stat} TPOT <= {self.tpot_ms:g} ms" if self.tpot_ms is not None else "",
                 f"{stat} TTFT <= {self.ttft_ms:g} ms" if self.ttft_ms is not None else ""]
        return ", ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tpot_ms": self.tpot_ms, "ttft_ms": self.ttft_ms}
        if self.percentile is not None:
            data["percentile"] = self.percentile
        return data


def slo_from_dict(data: Any, where: str, keys: tuple[str, str, str] = ("tpot_ms", "ttft_ms", "percentile")) -> Slo:
    """Read `{tpot_ms?, ttft_ms?, percentile?}` (under other `keys`, e.g. the CRD's camelCase); at least
    one bound is required."""
    tpot_key, ttft_key, percentile_key = keys
    mapping = require_mapping(data, where)
    require_keys(mapping, where, [], list(keys))
    values = {key: None if mapping.get(key) is None else number(mapping[key], f"{where}.{key}", minimum=0,
                                                                   strict_minimum=True)
              for key in (tpot_key, ttft_key)}
    if values[tpot_key] is None and values[ttft_key] is None:
        raise InputError(where, "no latency bound", f"{tpot_key} and/or {ttft_key}")
    percentile = mapping.get(percentile_key)
    if percentile is not None:
        percentile = number(percentile, f"{where}.{percentile_key}", minimum=0, strict_minimum=True, maximum=100)
    return Slo(values[tpot_key], values[ttft_key], percentile)


@dataclass(frozen=True)
class Profile:
    """`max_rps[input][output]`: highest req/s one replica of `gpu` (x `gpus_per_replica`) sustains
    within `slo` for requests of that bucket; None where it cannot serve them at all."""

    model: str
    gpu: str
    grid: BucketGrid
    max_rps: tuple[tuple[float | None, ...], ...]
    slo: Slo | None = None
    gpus_per_replica: int = 1
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.provenance.get("source", "unknown"))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form read back by `profile_from_dict`."""
        return {"model": self.model, "gpu": self.gpu, "gpus_per_replica": self.gpus_per_replica,
                "slo": self.slo.to_dict() if self.slo else None, "grid": self.grid.to_dict(),
                "provenance": dict(self.provenance), "max_rps": [list(row) for row in self.max_rps]}


def scale_profile(profile: Profile, factor: float) -> Profile:
    """`profile` with every max rate multiplied by `factor` (a capacity correction: 0.8 means a replica
    sustains 80% of what the profile says); the provenance records the factor."""
    if not (math.isfinite(factor) and factor > 0):
        raise InputError("correction", f"must be a positive number, got {factor!r}")
    if factor == 1.0:
        return profile
    rows = tuple(tuple(None if v is None else v * factor for v in row) for row in profile.max_rps)
    return replace(profile, max_rps=rows, provenance={**profile.provenance, "correction": factor})


def make_max_rps(matrix: Any, grid: BucketGrid, where: str) -> tuple[tuple[float | None, ...], ...]:
    """Validate a max-rate matrix shaped like `grid`: positive finite numbers, or null for 'cannot serve'."""
    rows, columns = grid.shape
    result = []
    for i, row in enumerate(sequence(matrix, where, length=rows)):
        cells = sequence(row, f"{where}[{i}]", length=columns)
        checked: list[float | None] = []
        for j, value in enumerate(cells):
            here = f"{where}[{i}][{j}]"
            if value is None:
                checked.append(None)
                continue
            rate = number(value, here, minimum=0)
            if rate == 0:
                raise InputError(here, "is 0", "a positive req/s, or null for a bucket this GPU cannot serve")
            checked.append(rate)
        result.append(tuple(checked))
    return tuple(result)


_FIELDS = ["model", "gpu", "grid", "max_rps"]
_OPTIONAL = ["slo", "gpus_per_replica", "provenance"]


def profile_from_dict(data: Any, where: str) -> Profile:
    """Read a profile: `{model, gpu, gpus_per_replica?, slo?, grid, provenance?, max_rps}`."""
    mapping = require_mapping(data, where)
    require_keys(mapping, where, _FIELDS, _OPTIONAL)
    grid = grid_from_dict(mapping["grid"], f"{where}.grid")
    provenance = dict(require_mapping(mapping.get("provenance") or {}, f"{where}.provenance"))
    source = provenance.get("source")
    if source is not None and source not in PROVENANCE_SOURCES:
        raise InputError(f"{where}.provenance.source", f"unknown source {source!r}", ", ".join(PROVENANCE_SOURCES))
    return Profile(
        model=text(mapping["model"], f"{where}.model"),
        gpu=text(mapping["gpu"], f"{where}.gpu"),
        grid=grid,
        max_rps=make_max_rps(mapping["max_rps"], grid, f"{where}.max_rps"),
        slo=None if mapping.get("slo") is None else slo_from_dict(mapping["slo"], f"{where}.slo"),
        gpus_per_replica=integer(mapping.get("gpus_per_replica", 1), f"{where}.gpus_per_replica", minimum=1),
        provenance=provenance,
    )
