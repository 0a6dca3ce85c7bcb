"""The result of a solve: replicas per option, how each bucket's load is split, costs and savings."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from melange.solver.profiles import Slo


@dataclass(frozen=True)
class OptionUse:
    """One option in an allocation. `load` is in replica-equivalents; `utilisation` = load / replicas;
    `nodes` the nodes its replicas fill when the option's node size is known (else None)."""

    name: str
    replicas: int
    gpus: int
    cost_per_hour: float
    request_rate: float
    load: float
    utilisation: float | None
    nodes: int | None = None


@dataclass(frozen=True)
class BucketSplit:
    """Share of one item's requests sent to each option (shares sum to 1). `index` is (input,) in
    routable mode and (input, output) in paper mode."""

    label: str
    index: tuple[int, ...]
    rate: float
    shares: Mapping[str, float]


@dataclass(frozen=True)
class Allocation:
    """One solved allocation. `mode` is 'paper' (per 2-D bucket, the paper's oracle routing) or
    'routable' (per input bucket, what a router can enforce on arrival)."""

    mode: str
    status: str
    cost_per_hour: float
    options: tuple[OptionUse, ...]
    splits: tuple[BucketSplit, ...]
    gap: float | None
    solver: str
    wall_time_s: float

    @property
    def replicas(self) -> dict[str, int]:
        return {o.name: o.replicas for o in self.options}

    @property
    def solved(self) -> bool:
        return self.status in ("optimal", "feasible")


@dataclass(frozen=True)
class SolveReport:
    """What `melange solve` reports: the chosen allocation, the other mode's cost, every single-type
    allocation's cost (None where that type alone cannot serve the workload) and the savings.

    It also states what the answer assumed: the profiles' `model` and `slo` (None where the
    profiles do not say), where the `rate` came from, and, when moves are charged, the `moves`
    (replicas added, negative: removed, per option) at `move_cost` $/h each, which `cost_per_hour`
    leaves out. `floors` are the options' `min_replicas`: the mix keeps them all, a single-type
    baseline only its own."""

    allocation: Allocation
    other_mode: Allocation | None
    single_type: Mapping[str, float | None]
    single_type_replicas: Mapping[str, int | None]
    rate: float
    notes: tuple[str, ...] = field(default=())
    profile_sources: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    slo: Slo | None = None
    rate_source: str = "given"
    move_cost: float = 0.0
    moves: Mapping[str, int] = field(default_factory=dict)
    floors: Mapping[str, int] = field(default_factory=dict)

    @property
    def move_cost_per_hour(self) -> float:
        """What the moves cost, $/h (the ILP's objective adds it to `cost_per_hour`)."""
        return self.move_cost * sum(abs(m) for m in self.moves.values())

    def savings_caveats(self) -> list[str]:
        """Why the mix can cost more than a single type: what the baselines do not pay."""
        caveats = []
        if self.move_cost > 0:
            caveats.append("single-type baselines pay no move cost, while the mix was chosen with moves charged "
                           f"at ${self.move_cost:g}/h per replica from the current allocation")
        floors = {name: n for name, n in self.floors.items() if n > 0}
        if floors:
            kept = ", ".join(f"{name} x{n}" for name, n in floors.items())
            caveats.append(f"the mix keeps every option's floor ({kept}); a single-type baseline keeps only its own")
        return caveats

    def _single_costs(self) -> list[float]:
        return [c for c in self.single_type.values() if c is not None]

    @property
    def best_single(self) -> tuple[str, float] | None:
        costs = [(c, n) for n, c in self.single_type.items() if c is not None]
        return (min(costs)[1], min(costs)[0]) if costs else None

    @property
    def worst_single(self) -> tuple[str, float] | None:
        costs = [(c, n) for n, c in self.single_type.items() if c is not None]
        return (max(costs)[1], max(costs)[0]) if costs else None

    def savings_percent(self, baseline: float | None) -> float | None:
        """(baseline - mix) / baseline in percent; None without a baseline or a solved mix."""
        if baseline is None or baseline <= 0 or not self.allocation.solved:
            return None
        return 100.0 * (baseline - self.allocation.cost_per_hour) / baseline

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `melange solve --output json`."""
        best, worst = self.best_single, self.worst_single
        return {
            "status": self.allocation.status,
            "mode": self.allocation.mode,
            "cost_per_hour": _round(self.allocation.cost_per_hour) if self.allocation.solved else None,
            "replicas": self.allocation.replicas,
            "gap": self.allocation.gap,
            "solver": self.allocation.solver,
            "wall_time_s": round(self.allocation.wall_time_s, 6),
            "rate": self.rate,
            "rate_source": self.rate_source,
            "model": self.model,
            "slo": None if self.slo is None else self.slo.to_dict(),
            "options": [_option_dict(o) for o in self.allocation.options],
            "splits": [{"bucket": s.label, "index": list(s.index), "rate": s.rate,
                        "shares": {k: round(v, 6) for k, v in s.shares.items() if v > 0}}
                       for s in self.allocation.splits],
            "single_type": {k: _round(v) for k, v in self.single_type.items()},
            "single_type_replicas": dict(self.single_type_replicas),
            "best_single_type": None if best is None else {"option": best[0], "cost_per_hour": _round(best[1])},
            "worst_single_type": None if worst is None else {"option": worst[0], "cost_per_hour": _round(worst[1])},
            "savings_vs_best_single_percent": _round(self.savings_percent(best[1] if best else None)),
            "savings_vs_worst_single_percent": _round(self.savings_percent(worst[1] if worst else None)),
            "other_mode": None if self.other_mode is None else {
                "mode": self.other_mode.mode, "status": self.other_mode.status,
                "cost_per_hour": _round(self.other_mode.cost_per_hour) if self.other_mode.solved else None,
                "replicas": self.other_mode.replicas},
            "profile_sources": dict(self.profile_sources),
            "move_cost": self.move_cost,
            "moves": dict(self.moves),
            "move_cost_per_hour": _round(self.move_cost_per_hour),
            "floors": dict(self.floors),
            "savings_caveats": self.savings_caveats(),
            "notes": list(self.notes),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _option_dict(use: OptionUse) -> dict[str, Any]:
    result = {"name": use.name, "replicas": use.replicas, "gpus": use.gpus,
              "cost_per_hour": _round(use.cost_per_hour), "request_rate": _round(use.request_rate),
              "load": _round(use.load), "utilisation": _round(use.utilisation)}
    if use.nodes is not None:
        result["nodes"] = use.nodes
    return result
