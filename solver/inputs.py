"""Read solve inputs from files: a bundle (one YAML/JSON file), separate workload/options/profile
files, or the reference implementation's JSON."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from melange.solver.buckets import BucketGrid, grid_from_dict, paper_grid
from melange.solver.checks import number, read_text, require_keys, require_mapping, sequence, text
from melange.solver.errors import InputError
from melange.solver.options import GpuOption, options_from_list
from melange.solver.problem import Problem, match_profiles
from melange.solver.profiles import Profile, profile_from_dict
from melange.solver.reference_format import REFERENCE_KEYS, is_reference_format, problem_from_reference
from melange.solver.workload import Workload, read_trace, workload_from_dict, workload_from_trace


@dataclass(frozen=True)
class LoadedInputs:
    """A checked problem and the solver settings its file asked for (CLI flags override them)."""

    problem: Problem
    settings: Mapping[str, Any]
    settings_where: str = "settings"
    # Other names a flag may give an option by (lower case -> option name): a catalog GPU's aliases.
    aliases: Mapping[str, str] = field(default_factory=dict)


class _TableDumper(yaml.SafeDumper):
    """Lists of plain values on one line, so a profile's matrix reads as a table."""


_TableDumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=all(not isinstance(v, (list, dict)) for v in data)))


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, plus YAML 1.2's floats without a dot (`1e9`, `2E-3`), which
    YAML 1.1 reads as strings: a rate of `1e9` is a number to anyone writing it."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def dump_yaml(data: Any) -> str:
    """YAML that `load_document` reads back, with number lists (rows, edges) on one line each."""
    return yaml.dump(data, Dumper=_TableDumper, sort_keys=False, width=120, allow_unicode=True)


def load_document(path: Path) -> Any:
    """Parse a YAML or JSON file (JSON is YAML too, but its errors read better from `json`)."""
    content = read_text(path)
    try:
        if Path(path).suffix.lower() == ".json":
            return json.loads(content)
        return yaml.load(content, Loader=_Loader)
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


def load_trace_workload(path: Path, grid: BucketGrid | None, rate: float | None,
                        rate_source: str | None = None) -> Workload:
    """Bin a trace (CSV/JSONL/JSON) on `grid` (the paper's grid by default); without `rate`, the
    trace's timestamps give it."""
    return workload_from_trace(read_trace(Path(path)), grid or paper_grid(), rate, str(path), rate_source)


def load_options(path: Path) -> tuple[GpuOption, ...]:
    """Read options: a list, or `{options: [...]}`."""
    data = load_document(path)
    if isinstance(data, Mapping) and "options" in data:
        return options_from_list(data["options"], f"{path}.options")
    return options_from_list(data, str(path))


def load_profile_files(paths: Sequence[Path]) -> list[tuple[Profile, str]]:
    """Every profile in the files, each with the file it came from (for errors that name it)."""
    return [(profile, str(path)) for path in paths for profile in load_profiles(path)]


def check_profile_grids(workload: Workload, sourced: Sequence[tuple[Profile, str]], workload_where: str) -> None:
    """Every profile must be on the workload's grid; a mismatch names the profile's file."""
    for profile, source in sourced:
        if profile.grid != workload.grid and not (profile.grid.indexed or workload.grid.indexed):
            raise InputError(source, f"{profile.gpu} profile's grid {profile.grid.to_dict()} does not match the "
                                     f"workload's grid {workload.grid.to_dict()} ({workload_where})",
                             "profiles on the workload's grid; a trace is binned on the profiles' grid unless "
                             "a grid is given")


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
    if mapping.get("kind") == "LLMService":
        raise InputError(where, f"an LLMService manifest, not a solve bundle: use melange plan {path}, which "
                                "checks and solves it as the operator would")
    if REFERENCE_KEYS & set(mapping) and not {"workload", "options", "profiles"} & set(mapping):
        missing = sorted(REFERENCE_KEYS - set(mapping))
        raise InputError(where, f"looks like a melange-release JSON config but lacks {', '.join(missing)}",
                         f"all of {', '.join(sorted(REFERENCE_KEYS))}")
    require_keys(mapping, where, _BUNDLE_REQUIRED, _BUNDLE_OPTIONAL)
    options = options_from_list(mapping["options"], f"{where}.options")
    sourced: list[tuple[Profile, str]] = []
    for k, entry in enumerate(sequence(mapping["profiles"], f"{where}.profiles")):
        if isinstance(entry, str):
            sourced.extend(load_profile_files([path.parent / entry]))
        else:
            sourced.append((profile_from_dict(entry, f"{where}.profiles[{k}]"), f"{where}.profiles[{k}]"))
    workload = _bundle_workload(mapping["workload"], path, f"{where}.workload", sourced[0][0].grid)
    check_profile_grids(workload, sourced, f"{where}.workload")
    settings = dict(require_mapping(mapping.get("settings") or {}, f"{where}.settings"))
    return LoadedInputs(match_profiles(workload, options, [p for p, _ in sourced], f"{where}.profiles",
                                       f"{where}.options"), settings, f"{where}.settings")


def _bundle_workload(data: Any, bundle: Path, where: str, profiles_grid: BucketGrid) -> Workload:
    """The bundle's workload: inline, or a trace binned on its `grid` (default: the profiles' grid)."""
    mapping = require_mapping(data, where)
    if "trace" not in mapping:
        return workload_from_dict(mapping, where)
    require_keys(mapping, where, ["trace"], ["rate", "grid"])
    grid = grid_from_dict(mapping["grid"], f"{where}.grid") if "grid" in mapping else profiles_grid
    rate = number(mapping["rate"], f"{where}.rate", minimum=0) if "rate" in mapping else None
    return load_trace_workload(bundle.parent / text(mapping["trace"], f"{where}.trace"), grid, rate,
                               f"given in {where}.rate")


def assemble(workload: Workload, options: Sequence[GpuOption], profiles: Sequence[Profile],
             options_where: str = "options") -> LoadedInputs:
    """Inputs from separate files (`options_where`: the options' file, for errors)."""
    return LoadedInputs(match_profiles(workload, options, profiles, options_where=options_where), {})
