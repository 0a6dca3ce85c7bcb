"""GPU options: what may be bought, at what price, in which replica shape."""
from __future__ import annotations

import math
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

    `gpus_per_node`: the GPUs one node (instance) of this type carries, when known; a replica's GPUs
    are on one node (tensor parallelism stays within a node), so a node holds
    `gpus_per_node // gpus_per_replica` replicas. With `node_price_per_hour` too the option is
    **node-priced**: what is bought is whole nodes, and n replicas cost
    ceil(n / replicas per node) x the node price (an A100 sold 8 per p4de.24xlarge costs the whole
    instance for one replica). Without it, a replica costs its GPUs at `price_per_hour` (the paper's model).
    """

    name: str
    price_per_hour: float
    gpu: str = ""
    gpus_per_replica: int = 1
    max_replicas: int | None = None
    spot: bool = False
    min_replicas: int = 0
    gpus_per_node: int | None = None
    node_price_per_hour: float | None = None

    @property
    def gpu_type(self) -> str:
        return self.gpu or self.name

    @property
    def replica_price(self) -> float:
        """$/h of one replica's GPUs at the per-GPU price."""
        return self.price_per_hour * self.gpus_per_replica

    @property
    def node_priced(self) -> bool:
        """Whether the option is bought in whole nodes."""
        return self.gpus_per_node is not None and self.node_price_per_hour is not None

    @property
    def replicas_per_node(self) -> int | None:
        """Replicas one node holds (None: the node's size is not known)."""
        return None if self.gpus_per_node is None else self.gpus_per_node // self.gpus_per_replica

    def nodes(self, replicas: int) -> int | None:
        """Nodes that `replicas` replicas fill (None: the node's size is not known)."""
        per_node = self.replicas_per_node
        return None if not per_node else math.ceil(replicas / per_node)

    def cost(self, replicas: int) -> float:
        """$/h of `replicas` replicas: whole nodes when node-priced, else GPUs."""
        if self.node_priced:
            return (self.nodes(replicas) or 0) * self.node_price_per_hour
        return replicas * self.replica_price


_FIELDS = ["name", "price_per_hour"]
_OPTIONAL = ["gpu", "gpus_per_replica", "max_replicas", "min_replicas", "spot", "gpus_per_node",
             "node_price_per_hour"]


def check_node_shape(gpus_per_replica: int, gpus_per_node: int | None, node_price: float | None, where: str,
                     names: tuple[str, str, str] = ("gpus_per_node", "node_price_per_hour", "gpus_per_replica")) -> None:
    """A node holds at least one replica, and a node price needs the node's GPU count."""
    if node_price is not None and gpus_per_node is None:
        raise InputError(f"{where}.{names[1]}", "given without " + names[0],
                         f"{names[0]} too: the GPUs one node of this price carries")
    if gpus_per_node is not None and gpus_per_node < gpus_per_replica:
        raise InputError(f"{where}.{names[0]}", f"{gpus_per_node} is fewer than {names[2]} {gpus_per_replica}",
                         "a node that holds at least one replica (a replica's GPUs are on one node)")


def option_from_dict(data: Any, where: str) -> GpuOption:
    """Read one option: `{name, price_per_hour, gpu?, gpus_per_replica?, max_replicas?, min_replicas?, spot?,
    gpus_per_node?, node_price_per_hour?}`; both node fields make it node-priced."""
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
    gpus_per_replica = integer(mapping.get("gpus_per_replica", 1), f"{where}.gpus_per_replica", minimum=1)
    gpus_per_node = None if mapping.get("gpus_per_node") is None else integer(
        mapping["gpus_per_node"], f"{where}.gpus_per_node", minimum=1)
    node_price = None if mapping.get("node_price_per_hour") is None else number(
        mapping["node_price_per_hour"], f"{where}.node_price_per_hour", minimum=0, strict_minimum=True)
    check_node_shape(gpus_per_replica, gpus_per_node, node_price, where)
    return GpuOption(
        name=text(mapping["name"], f"{where}.name"),
        price_per_hour=number(mapping["price_per_hour"], f"{where}.price_per_hour", minimum=0, strict_minimum=True),
        gpu=text(mapping["gpu"], f"{where}.gpu") if "gpu" in mapping else "",
        gpus_per_replica=gpus_per_replica,
        max_replicas=max_replicas,
        spot=spot,
        min_replicas=min_replicas,
        gpus_per_node=gpus_per_node,
        node_price_per_hour=node_price,
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
