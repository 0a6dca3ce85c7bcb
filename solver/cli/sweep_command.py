"""`melange sweep`: the cheapest mix and every single GPU type's cost at several rates (and SLOs),
as a table, JSON or CSV, and optionally a PNG plot.

It reads its inputs as `melange solve` does (`read_inputs`, `settings_from`) and solves the same
request mix once per rate. Several SLOs need profiles per SLO, which only the catalog path
(`--model`) can make (estimated per SLO); a bundle's or --profiles' profiles hold one SLO, so
several --tpot-ms values are refused there. matplotlib is imported only for --plot.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from melange.solver.cli.solve_command import (DEFAULT_TPOT_MS, add_input_arguments, add_model_arguments, mode_from,
                                              read_inputs, settings_from)
from melange.solver.checks import number
from melange.solver.errors import InfeasibleError, InputError

if TYPE_CHECKING:  # imported where used, so that registering the flags costs `melange solve` nothing
    from melange.solver.allocation import SolveReport
    from melange.solver.cli.progress import ProgressBar
    from melange.solver.problem import Problem

OUTPUTS = ("table", "json", "csv")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `melange sweep`."""
    parser = commands.add_parser(
        "sweep", help="cost of the cheapest mix and of each single GPU type across rates (and SLOs), with a plot",
        description="Solve the same request mix at several rates (and, with --model, several TPOT SLOs): the "
                    "cheapest mix, its $/h, every single GPU type's $/h and the savings, as a table, JSON or "
                    "CSV, and with --plot a PNG of cost against rate. Inputs as for melange solve: a BUNDLE, "
                    "separate files, the catalog (--model, --gpus) or Prometheus; --rates replaces the "
                    "workload's rate. Exit status 2: bad input; 3: a server unavailable.")
    groups = add_input_arguments(parser)
    groups["inputs"].add_argument("--rates", required=True,
                                  help="comma-separated total request rates in req/s, each > 0, e.g. 1,2,4,8,16,32; "
                                       "they replace the workload's rate, its request mix is kept")
    groups["catalog"].add_argument("--tpot-ms",
                                   help="mean TPOT SLO(s) in ms, comma-separated, e.g. 40,120: one sweep per SLO, "
                                        "profiles estimated per SLO. Only with --model: a bundle's profiles hold "
                                        f"one SLO (default {DEFAULT_TPOT_MS:g} unless --ttft-ms is given)")
    add_model_arguments(parser, single_solve=False)
    parser.add_argument("--output", choices=OUTPUTS, default="table",
                        help="table (default), json or csv on stdout; progress goes to stderr")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also write a PNG: cost vs rate for the mix and each single type, and the mix's "
                             "replicas per type (needs matplotlib: .venv/bin/pip install -e '.[plot]' in a checkout) "
                             "(default: no plot)")
    parser.set_defaults(handler=run)


def parse_tpots(args: argparse.Namespace) -> list[float | None]:
    """The --tpot-ms values, one sweep each ([None] when not given); several need --model."""
    if args.tpot_ms is None:
        return [None]
    parts = [part.strip() for part in args.tpot_ms.split(",")]
    values: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise InputError("--tpot-ms", f"{part!r} is not a number", "comma-separated TPOTs in ms, e.g. 40,120") \
                from None
        values.append(number(value, "--tpot-ms", minimum=0, strict_minimum=True))
    if len(values) > 1 and not args.model:
        raise InputError("--tpot-ms", f"{len(values)} SLOs given, but a bundle's (or --profiles') profiles were made "
                                      "for one SLO and cannot be re-estimated for another",
                         "several SLOs with --model and --gpus (profiles estimated per SLO), or one sweep per "
                         "set of profiles")
    if len(set(values)) < len(values):
        raise InputError("--tpot-ms", "an SLO is given twice", "each TPOT once")
    return list(values)


def run(args: argparse.Namespace) -> int:
    """Solve at every (SLO, rate) and print the table, JSON or CSV; write the plot if asked."""
    import csv
    import json

    from melange.solver.cli.profile_command import check_output_path
    from melange.solver.cli.progress import ProgressBar
    from melange.solver.sweep import csv_header, csv_row, parse_rates, sweep_document, sweep_point
    rates = parse_rates(args.rates)
    tpots = parse_tpots(args)
    if args.plot is not None:
        check_output_path(args.plot, "--plot")
        from melange.solver.cli.sweep_plot import require_matplotlib
        require_matplotlib()
    sweeps: list[tuple[Problem, list[SolveReport]]] = []
    unservable: list[tuple[float | None, InfeasibleError]] = []  # (SLO, why) where some rate has no mix
    progress = ProgressBar(len(tpots) * len(rates))
    try:
        for tpot in tpots:
            try:
                problem, reports, infeasible = _sweep_one_slo(args, tpot, rates, progress,
                                                              several_slos=len(tpots) > 1)
            except InputError as error:
                if len(tpots) == 1:
                    raise
                raise InputError(f"--tpot-ms {tpot:g}", str(error)) from None
            sweeps.append((problem, reports))
            if infeasible is not None:
                unservable.append((tpot, infeasible))
    finally:
        progress.close()
    every_report = [report for _, reports in sweeps for report in reports]
    if unservable and not any(report.allocation.solved for report in every_report):
        tpot, error = unservable[0]  # nothing to show: the first reason, as `melange solve` gives it
        raise error if len(tpots) == 1 else InputError(f"--tpot-ms {tpot:g}", str(error))
    problem = sweeps[0][0]
    names = [option.name for option in problem.options]
    why = dict(unservable)
    notes = [f"SLO {_slo_text(reports[0])}: {why[tpot]}" for (_, reports), tpot in zip(sweeps, tpots) if tpot in why]
    if args.output == "json":
        document = sweep_document(every_report, problem)
        document["notes"] += notes
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(csv_header(names))
        writer.writerows(csv_row(sweep_point(report), names) for report in every_report)
    else:
        sys.stdout.write(render_sweep_table(sweeps, notes))
    if args.plot is not None:
        from melange.solver.cli.sweep_plot import plot_sweep
        plot_sweep(args.plot, [(_slo_text(reports[0]), [sweep_point(r) for r in reports]) for _, reports in sweeps],
                   names, every_report[0].model, every_report[0].allocation.mode, grid_text(problem))
        sys.stdout.flush()
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _sweep_one_slo(args: argparse.Namespace, tpot: float | None, rates: Sequence[float], progress: ProgressBar,
                   several_slos: bool) -> tuple[Problem, list[SolveReport], InfeasibleError | None]:
    """The inputs read as `melange solve` reads them (at this TPOT), solved at every rate. A rate with
    traffic no option can serve is kept as an 'infeasible' row; the reason is returned beside."""
    import copy

    from melange.solver.solve import solve, unservable_report
    from melange.solver.sweep import at_rate
    inputs = copy.copy(args)
    inputs.tpot_ms, inputs.rate = tpot, rates[0]
    loaded = read_inputs(inputs)
    settings, mode = settings_from(inputs, loaded), mode_from(inputs, loaded)
    reports = []
    infeasible = None
    for rate in rates:
        progress.step(f"solving at {rate:g} req/s" + (f", TPOT {tpot:g} ms" if several_slos else ""))
        problem = at_rate(loaded.problem, rate)
        try:
            reports.append(solve(problem, settings, mode=mode, compare_modes=False))
        except InfeasibleError as error:
            infeasible = infeasible or error
            reports.append(unservable_report(problem, settings, mode))
    return loaded.problem, reports, infeasible


def _slo_text(report: SolveReport) -> str:
    return report.slo.describe() if report.slo is not None else "not stated by the profiles"


def grid_text(problem: Problem) -> str:
    """The bucket grid in words, e.g. '6x6 buckets up to 2000 input / 2000 output tokens'."""
    grid = problem.workload.grid
    rows, columns = grid.shape
    if grid.indexed:
        return f"{rows}x{columns} buckets (by index)"
    return f"{rows}x{columns} buckets up to {grid.input_edges[-1]} input / {grid.output_edges[-1]} output tokens"


def mix_text(report: SolveReport) -> str:
    """The mix as '1 l4 + 2 a10g'; the status where the solver found none."""
    if not report.allocation.solved:
        return report.allocation.status
    text = " + ".join(f"{n} {name}" for name, n in report.allocation.replicas.items() if n) or "no replicas"
    if report.allocation.status == "feasible":
        gap = report.allocation.gap
        text += " (feasible" + (f", gap <= {100 * gap:.2f}%)" if gap is not None else ")")
    return text


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def render_sweep_table(sweeps: Sequence[tuple[Problem, Sequence[SolveReport]]], notes: Sequence[str] = ()) -> str:
    """The human-readable sweep: per SLO, one row per rate with the mix, its $/h, each single type's
    $/h (`-`: that type alone cannot serve the workload) and the savings."""
    problem, first = sweeps[0][0], sweeps[0][1][0]
    names = [option.name for option in problem.options]
    lines = [f"Mélange sweep, {first.allocation.mode} mode ({first.allocation.solver}): model "
             f"{first.model or 'not stated by the profiles'}; {grid_text(problem)}",
             "options ($/h per replica): " + ", ".join(
                 f"{o.name} {o.node_price_per_hour:.3f} per {o.replicas_per_node}-replica node" if o.node_priced
                 else f"{o.name} {o.replica_price:.3f}" for o in problem.options)]
    for _, reports in sweeps:
        mixes = [mix_text(r) for r in reports]
        mix_width = max(len("mix"), *(len(m) for m in mixes))
        option_widths = [max(9, len(name) + 5) for name in names]
        header = (f"{'req/s':>7} {'mix $/h':>9}  {'mix':<{mix_width}}  "
                  + "  ".join(f"{name + ' only':>{w}}" for name, w in zip(names, option_widths))
                  + f"  {'best single':<{max(11, *map(len, names))}} {'saves':>8} {'vs worst':>9}")
        lines += ["", f"SLO {_slo_text(reports[0])}", header, "-" * len(header)]
        for report, mix in zip(reports, mixes):
            best, worst = report.best_single, report.worst_single
            lines.append(
                f"{report.rate:>7g} {_money(report.allocation.cost_per_hour if report.allocation.solved else None):>9}"
                f"  {mix:<{mix_width}}  "
                + "  ".join(f"{_money(report.single_type[name]):>{w}}" for name, w in zip(names, option_widths))
                + f"  {(best[0] if best else '-'):<{max(11, *map(len, names))}}"
                f" {_percent(report.savings_percent(best[1] if best else None)):>8}"
                f" {_percent(report.savings_percent(worst[1] if worst else None)):>9}")
    lines += ["", "saves: the mix's saving against the best single type at that rate; vs worst: against the costliest",
              "type that can serve alone; '-': that type alone cannot serve the workload"]
    sources = {source for _, reports in sweeps for source in reports[0].profile_sources.values()}
    if "estimated" in sources:
        lines.append("note: some profiles are estimates from specs, not measurements")
    lines += [f"note: {note}" for note in [*first.notes, *notes]]
    return "\n".join(lines) + "\n"
