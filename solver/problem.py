"""A solve's inputs, checked for consistency: workload, GPU options and one profile per option."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from melange.solver.buckets import check_same_grid
from melange.solver.errors import InputError
from melange.solver.options import GpuOption
from melange.solver.profiles import Profile
from melange.solver.workload import Workload


@dataclass(frozen=True)
class Problem:
    """`profiles[g]` is the profile of `options[g]`."""

    workload: Workload
    options: tuple[GpuOption, ...]
    profiles: tuple[Profile, ...]


def _profile_key(gpu: str, gpus_per_replica: int) -> tuple[str, int]:
    return gpu.strip().lower(), gpus_per_replica


def match_profiles(workload: Workload, options: Sequence[GpuOption], profiles: Sequence[Profile],
                   where: str = "profiles", options_where: str = "options") -> Problem:
    """Pair each option with the profile of its GPU type and replica size, and check that every
    profile uses the workload's grid, one model and one SLO. `where` and `options_where` say where
    the profiles and the options were given (a bundle's errors name its file)."""
    if not options:
        raise InputError("options", "no GPU options given", "at least one option")
    by_key: dict[tuple[str, int], Profile] = {}
    for k, profile in enumerate(profiles):
        check_same_grid(workload.grid, profile.grid, f"{where}[{k}] ({profile.gpu})")
        by_key.setdefault(_profile_key(profile.gpu, profile.gpus_per_replica), profile)
    matched = []
    for option in options:
        profile = by_key.get(_profile_key(option.gpu_type, option.gpus_per_replica))
        if profile is None:
            known = sorted(f"{gpu} x{tp}" for gpu, tp in by_key)
            raise InputError(f"{options_where}.{option.name}.gpu",
                             f"no profile for GPU {option.gpu_type!r} with {option.gpus_per_replica} GPU(s) per replica",
                             f"profiles given: {', '.join(known) or 'none'}")
        matched.append(profile)
    models = sorted({p.model for p in matched})
    if len(models) > 1:
        raise InputError(where, f"profiles are for different models: {', '.join(models)}", "one model per solve")
    slos = {p.slo for p in matched if p.slo is not None}
    if len(slos) > 1:
        raise InputError(where, "profiles were made for different SLOs: "
                         + "; ".join(sorted(s.describe() for s in slos)), "one SLO per solve")
    return Problem(workload, tuple(options), tuple(matched))
