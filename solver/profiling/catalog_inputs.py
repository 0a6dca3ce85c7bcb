"""GPU options and profiles straight from the catalog, for `melange solve --model M --gpus ...`:
shipped estimated profiles where they match the request, estimated on the spot otherwise, so a
solve needs no profiling at all."""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from melange.solver.buckets import BucketGrid
from melange.solver.profiling.catalog import Catalog, GpuSpec, ModelSpec
from melange.solver.checks import number
from melange.solver.errors import InputError
from melange.solver.profiling.estimate import estimate_profile
from melange.solver.options import GpuOption
from melange.solver.profiles import Profile, Slo
from melange.solver.profiling.shipped_profiles import shipped_profiles


def parse_gpu_choices(value: str) -> list[tuple[str, int]]:
    """`l4,a10g,h100:2` -> [("l4", 1), ("a10g", 1), ("h100", 2)]: GPU names with GPUs per replica."""
    choices = []
    for part in value.split(","):
        name, _, count = part.strip().partition(":")
        if not name:
            raise InputError("--gpus", f"empty GPU name in {value!r}", "GPU[:GPUS_PER_REPLICA],... e.g. l4,a10g,h100:2")
        try:
            gpus = int(count) if count else 1
        except ValueError:
            raise InputError("--gpus", f"{count!r} is not a whole number of GPUs per replica",
                             "GPU[:GPUS_PER_REPLICA], e.g. h100:2") from None
        if gpus < 1:
            raise InputError("--gpus", f"{part.strip()!r} asks for {gpus} GPUs per replica", "1 or more")
        choices.append((name, gpus))
    return choices


def option_name(gpu: GpuSpec, gpus: int) -> str:
    """The one name of the option of `gpus` GPUs of this type a replica: the catalog's name in lower
    case, e.g. h100-sxm, with -x2 for two GPUs a replica."""
    return gpu.name.lower() + (f"-x{gpus}" if gpus > 1 else "")


def option_aliases(catalog: Catalog, choices: Sequence[tuple[str, int]]) -> dict[str, str]:
    """Every other name a flag may give an option chosen by `--gpus` (lower case -> option name): the
    name typed in --gpus, the catalog's name and aliases, each with -xN (or :N) for N GPUs a replica.
    So `--gpus h100` makes the option h100-sxm, and `--current h100=1` names it too."""
    aliases: dict[str, str] = {}
    for name, gpus in choices:
        gpu = catalog.gpu(name)
        target = option_name(gpu, gpus)
        for key in {name.lower(), gpu.name.lower(), *gpu.aliases}:
            forms = [key] if gpus == 1 else [f"{key}-x{gpus}", f"{key}:{gpus}"]
            for form in forms:
                aliases.setdefault(form, target)
    return aliases


def parse_prices(values: Sequence[str]) -> dict[str, float]:
    """`GPU=USD` pairs overriding catalog prices (per GPU, per hour)."""
    prices = {}
    for item in values:
        name, sep, price = item.partition("=")
        if not sep or not name.strip():
            raise InputError("--price", f"cannot read {item!r}", "GPU=USD_PER_HOUR, e.g. h100=4.5")
        try:
            value = float(price)
        except ValueError:
            raise InputError("--price", f"{price!r} is not a number", "GPU=USD_PER_HOUR") from None
        prices[name.strip().lower()] = number(value, f"--price {name.strip()}", minimum=0, strict_minimum=True)
    return prices


def _shipped_match(model: ModelSpec, gpu: GpuSpec, gpus: int, slo: Slo, grid: BucketGrid) -> Profile | None:
    spec = {"memory_gb": gpu.memory_gb, "bandwidth_gb_s": gpu.bandwidth_gb_s, "fp16_tflops": gpu.fp16_tflops}
    for profile in shipped_profiles(model.name):
        if (profile.gpu == gpu.name and profile.gpus_per_replica == gpus and profile.slo == slo
                and profile.grid == grid and profile.provenance.get("gpu_spec") == spec):
            return profile
    return None


@functools.lru_cache(maxsize=512)
def catalog_profile(model: ModelSpec, gpu: GpuSpec, gpus: int, slo: Slo, grid: BucketGrid) -> Profile:
    """The shipped profile for this shape when one matches exactly, else a fresh estimate. Cached: the
    operator asks again for the same shapes every interval (frozen inputs, a frozen answer)."""
    return _shipped_match(model, gpu, gpus, slo, grid) or estimate_profile(model, gpu, slo, grid, tensor_parallel=gpus)


def catalog_options_and_profiles(catalog: Catalog, model: ModelSpec, choices: Sequence[tuple[str, int]], slo: Slo,
                                 grid: BucketGrid, prices: Mapping[str, float] | None = None,
                                 node_pricing: bool = False) -> tuple[tuple[GpuOption, ...], list[Profile]]:
    """One option per chosen GPU shape, priced from the catalog (or `prices`), each with a shipped
    or freshly estimated profile for `model` at `slo` on `grid`. With `node_pricing` each option is
    bought in whole instances of the catalog's cheapest instance type (per replica) that carries it."""
    prices = {k.lower(): v for k, v in (prices or {}).items()}
    options, profiles, chosen_names = [], [], set()
    for name, gpus in choices:
        gpu = catalog.gpu(name)
        chosen_names |= {name.lower(), gpu.name.lower(), *gpu.aliases}
        price = next((prices[key] for key in [name.lower(), gpu.name.lower(), *gpu.aliases] if key in prices),
                     gpu.price_per_hour)
        named = option_name(gpu, gpus)
        if any(o.name == named for o in options):
            raise InputError("--gpus", f"{name}:{gpus} is given twice", "each GPU shape once")
        shape = gpu.node_shape(gpus) if node_pricing else None
        if node_pricing and shape is None:
            raise InputError("--pricing", f"node, but the catalog knows no instance type with {gpus} or more "
                                          f"{gpu.name} GPUs", "--pricing gpu, or an options file with gpus_per_node "
                                                               "and node_price_per_hour")
        options.append(GpuOption(named, price, gpu=gpu.name, gpus_per_replica=gpus,
                                 gpus_per_node=shape.gpus if shape else None,
                                 node_price_per_hour=shape.price_per_hour if shape else None))
        profiles.append(catalog_profile(model, gpu, gpus, slo, grid))
    unknown = sorted(set(prices) - chosen_names)
    if unknown:
        raise InputError("--price", f"{unknown[0]!r} is not among --gpus", "GPU=USD for a GPU given in --gpus")
    return tuple(options), profiles
