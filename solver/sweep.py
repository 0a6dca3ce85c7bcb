"""A cost sweep: the same request mix solved at several rates, the mix's $/h beside every single
type's, as the Mélange paper's Figures 11-13 compare them (one workload, rates 1-32 req/s)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from melange.solver.allocation import SolveReport
from melange.solver.errors import InputError
from melange.solver.problem import Problem

SWEPT_RATE_SOURCE = "given by --rates"


def parse_rates(value: str, flag: str = "--rates") -> tuple[float, ...]:
    """Comma-separated request rates in req/s, each finite and > 0 (a log-scale axis has no 0), no repeats."""
    allowed = "comma-separated rates in req/s, each > 0, e.g. 1,2,4,8,16,32"
    parts = [part.strip() for part in value.split(",")]
    if not any(parts):
        raise InputError(flag, "no rates given", allowed)
    rates = []
    for part in parts:
        try:
            rate = float(part)
        except ValueError:
            raise InputError(flag, f"{part!r} is not a number", allowed) from None
        if not rate > 0 or rate == float("inf"):
            raise InputError(flag, f"rate {part} is not a finite number > 0", allowed)
        if rate in rates:
            raise InputError(flag, f"rate {part} is given twice", allowed)
        rates.append(rate)
    return tuple(rates)


def at_rate(problem: Problem, rate: float) -> Problem:
    """The same problem (options, profiles, request mix) at another total rate."""
    return dataclasses.replace(problem, workload=problem.workload.with_rate(rate, SWEPT_RATE_SOURCE))


def sweep_point(report: SolveReport) -> dict[str, Any]:
    """One rate of a sweep as a JSON object: the fields of `melange solve --output json` that a cost
    comparison needs, under the same names."""
    full = report.to_dict()
    keys = ("rate", "slo", "status", "cost_per_hour", "replicas", "gap", "single_type", "single_type_replicas",
            "best_single_type", "worst_single_type", "savings_vs_best_single_percent",
            "savings_vs_worst_single_percent")
    return {key: full[key] for key in keys}


def sweep_document(reports: Sequence[SolveReport], problem: Problem) -> dict[str, Any]:
    """The JSON document of `melange sweep --output json`: one point per (SLO, rate), in sweep order;
    `problem` is any of the swept problems (they share options, grid and request mix)."""
    models = {r.model for r in reports}
    return {"model": models.pop() if len(models) == 1 else None,
            "mode": reports[0].allocation.mode if reports else None,
            "grid": problem.workload.grid.to_dict(),
            "options": [option.name for option in problem.options],
            "notes": list(problem.workload.notes),
            "points": [sweep_point(r) for r in reports]}


def csv_header(option_names: Sequence[str]) -> list[str]:
    """The columns of `melange sweep --output csv`: one row per (SLO, rate)."""
    return (["tpot_ms", "ttft_ms", "rate", "status", "cost_per_hour"]
            + [f"{name}_replicas" for name in option_names]
            + [f"{name}_alone_cost_per_hour" for name in option_names]
            + ["best_single_type", "best_single_cost_per_hour", "savings_vs_best_single_percent",
               "savings_vs_worst_single_percent"])


def csv_row(point: dict[str, Any], option_names: Sequence[str]) -> list[Any]:
    """A `sweep_point` as a CSV row of `csv_header`; an empty cell where there is no value."""
    def cell(value: Any) -> Any:
        return "" if value is None else value

    slo = point["slo"] or {}
    best = point["best_single_type"] or {}
    return ([cell(slo.get("tpot_ms")), cell(slo.get("ttft_ms")), point["rate"], point["status"],
             cell(point["cost_per_hour"])]
            + [point["replicas"][name] for name in option_names]
            + [cell(point["single_type"][name]) for name in option_names]
            + [cell(best.get("option")), cell(best.get("cost_per_hour")),
               cell(point["savings_vs_best_single_percent"]), cell(point["savings_vs_worst_single_percent"])])
