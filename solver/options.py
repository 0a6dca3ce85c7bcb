"""GPU options: what may be bought, at what price, in which replica shape."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melange.solver.checks import integer, number, require_keys, require_mapping, sequence, text
from melange.solver.errors import InputError


@dataclass(frozen=True)
class GpuOption:
    """One purchasable replica shape.

    `price_per_hour` is the on-demand price of ONE GPU; a replica uses `gpus_per_replica` GPUs
    (tensor parallelism) and costs their sum. `max_replicas` is a quota (None: unbounded);
    `min_replicas` a floor (replicas kept warm, or ones already bought).
    `spot` options may be pre-empted; the solver can cap their share of the traffic.
    """

    name: str
    price_per_hour: float
    gpu: str = ""
    gpus_per_replica: int = 1
    max_replicas: int | None = None
    spot: bool = False
    min_replicas: int = 0

    @property
    def gpu_type(self) -> str:
        return self.gpu or self.name

    @property
    def replica_price(self) -> float:
        """$/h of one replica."""
        return self.price_per_hour * self.gpus_per_replica


_FIELDS = ["name", "price_per_hour"]
_OPTIONAL = ["gpu", "gpus_per_replica", "max_replicas", "min_replicas", "spot"]


def option_from_dict(data: Any, where: str) -> GpuOption:
    """Read one option: `{name, price_per_hour, gpu?, gpus_per_replica?, max_replicas?, min_replicas?, spot?}`."""
    mapping: Mapping[str, Any] = require_mapping(data, where)
    require_keys(mapping, where, _FIELDS, _OPTIONAL)
    spot = mapping.get("spot", False)
    if not isinstance(spot, bool):
        raise InputError(f"{where}.spot", f"expected true or false, got {spot!r}")
    max_replicas = mapping.get("max_replicas")
    if max_replicas is not None:
        max_replicas = integer(max_replicas, f"{where}.max_replicas", minimum=0)
    min_replicas = integer(mapping.get("min_replicas", 0), f"{where}.min_replicas", minimum=0)
    if max_replicas is not None and min_replicas > max_replicas:
        raise InputError(f"{where}.min_replicas", f"{min_replicas} is above max_replicas {max_replicas}",
                         "min_replicas <= max_replicas")
    return GpuOption(
        name=text(mapping["name"], f"{where}.name"),
        price_per_hour=number(mapping["price_per_hour"], f"{where}.price_per_hour", minimum=0, strict_minimum=True),
        gpu=text(mapping["gpu"], f"{where}.gpu") if "gpu" in mapping else "",
        gpus_per_replica=integer(mapping.get("gpus_per_replica", 1), f"{where}.gpus_per_replica", minimum=1),
        max_replicas=max_replicas,
        spot=spot,
        min_replicas=min_replicas,
    )


def options_from_list(data: Any, where: str) -> tuple[GpuOption, ...]:
    """Read a non-empty list of options with unique names."""
    options = tuple(option_from_dict(item, f"{where}[{k}]") for k, item in enumerate(sequence(data, where)))
    seen: set[str] = set()
    for k, option in enumerate(options):
        if option.name in seen:
            raise InputError(f"{where}[{k}].name", f"duplicate option name {option.name!r}", "unique names")
        seen.add(option.name)
    return options
