"""Read solve inputs from files: a bundle (one YAML/JSON file), separate workload/options/profile
files, or the reference implementation's JSON."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from melange.solver.buckets import BucketGrid, grid_from_dict, paper_grid
from melange.solver.checks import number, require_keys, require_mapping, sequence, text
from melange.solver.errors import InputError
from melange.solver.options import GpuOption, options_from_list
from melange.solver.problem import Problem, match_profiles
from melange.solver.profiles import Profile, profile_from_dict
from melange.solver.reference_format import is_reference_format, problem_from_reference
from melange.solver.workload import Workload, read_trace, workload_from_dict, workload_from_trace


@dataclass(frozen=True)
class LoadedInputs:
    """A checked problem and the solver settings its file asked for (CLI flags override them)."""

    problem: Problem
    settings: Mapping[str, Any]


class _TableDumper(yaml.SafeDumper):
    """Lists of plain values on one line, so a profile's matrix reads as a table."""


_TableDumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=all(not isinstance(v, (list, dict)) for v in data)))


def dump_yaml(data: Any) -> str:
    """YAML that `load_document` reads back, with number lists (rows, edges) on one line each."""
    return yaml.dump(data, Dumper=_TableDumper, sort_keys=False, width=120, allow_unicode=True)


def load_document(path: Path) -> Any:
    """Parse a YAML or JSON file (JSON is YAML too, but its errors read better from `json`)."""
    try:
        content = Path(path).read_text()
    except OSError as error:
        raise InputError(str(path), f"cannot read file: {error.strerror}") from None
    try:
        if Path(path).suffix.lower() == ".json":
            return json.loads(content)
        return yaml.safe_load(content)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}", f"not valid JSON ({error.msg})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(where, f"not valid YAML ({getattr(error, 'problem', None) or error})") from None


def load_workload(path: Path) -> Workload:
    """Read a workload YAML `{rate, grid, distribution}`."""
    data = load_document(path)
    if isinstance(data, Mapping) and "workload" in data:
        data = data["workload"]
    return workload_from_dict(data, str(path))


def load_trace_workload(path: Path, grid: BucketGrid | None, rate: float | None) -> Workload:
    """Bin a trace (CSV/JSONL) on `grid` (the paper's grid by default)."""
    return workload_from_trace(read_trace(Path(path)), grid or paper_grid(), rate, str(path))


def load_options(path: Path) -> tuple[GpuOption, ...]:
    """Read options: a list, or `{options: [...]}`."""
    data = load_document(path)
    if isinstance(data, Mapping) and "options" in data:
        return options_from_list(data["options"], f"{path}.options")
    return options_from_list(data, str(path))


def load_profiles(path: Path) -> list[Profile]:
    """Read one profile, a list of them, or `{profiles: [...]}`."""
    data = load_document(path)
    if isinstance(data, Mapping) and "profiles" in data:
        data, where = data["profiles"], f"{path}.profiles"
    else:
        where = str(path)
    if isinstance(data, Mapping):
        return [profile_from_dict(data, where)]
    return [profile_from_dict(item, f"{where}[{k}]") for k, item in enumerate(sequence(data, where))]


_BUNDLE_REQUIRED = ["workload", "options", "profiles"]
_BUNDLE_OPTIONAL = ["settings", "description"]


def load_bundle(path: Path) -> LoadedInputs:
    """Read a bundle `{workload, options, profiles, settings?}` or a reference-format JSON file.

    In a bundle, `workload` is inline or `{trace: FILE, rate?: R, grid?: {...}}`, and each profile is
    inline or a file path relative to the bundle.
    """
    path = Path(path)
    data = load_document(path)
    if is_reference_format(data):
        problem, slice_factor = problem_from_reference(data, str(path))
        return LoadedInputs(problem, {"slice_factor": slice_factor})
    where = str(path)
    mapping = require_mapping(data, where)
    require_keys(mapping, where, _BUNDLE_REQUIRED, _BUNDLE_OPTIONAL)
    workload = _bundle_workload(mapping["workload"], path, f"{where}.workload")
    options = options_from_list(mapping["options"], f"{where}.options")
    profiles: list[Profile] = []
    for k, entry in enumerate(sequence(mapping["profiles"], f"{where}.profiles")):
        if isinstance(entry, str):
            profiles.extend(load_profiles(path.parent / entry))
        else:
            profiles.append(profile_from_dict(entry, f"{where}.profiles[{k}]"))
    settings = dict(require_mapping(mapping.get("settings") or {}, f"{where}.settings"))
    return LoadedInputs(match_profiles(workload, options, profiles, f"{where}.profiles"), settings)


def _bundle_workload(data: Any, bundle: Path, where: str) -> Workload:
    mapping = require_mapping(data, where)
    if "trace" not in mapping:
        return workload_from_dict(mapping, where)
    require_keys(mapping, where, ["trace"], ["rate", "grid"])
    grid = grid_from_dict(mapping["grid"], f"{where}.grid") if "grid" in mapping else None
    rate = number(mapping["rate"], f"{where}.rate", minimum=0) if "rate" in mapping else None
    return load_trace_workload(bundle.parent / text(mapping["trace"], f"{where}.trace"), grid, rate)


def assemble(workload: Workload, options: Sequence[GpuOption], profiles: Sequence[Profile]) -> LoadedInputs:
    """Inputs from separate files."""
    return LoadedInputs(match_profiles(workload, options, profiles), {})
