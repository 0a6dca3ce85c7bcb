"""`melange solve`: the cheapest mix of GPU options for a workload, no cluster needed.

The catalog (`--model`) and Prometheus (`--prometheus`) paths import their modules when used, so a
solve on a bundle loads only the core.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from melange.solver.allocation import SolveReport
from melange.solver.buckets import BucketGrid, grid_from_dict, paper_grid
from melange.solver.checks import integer, number
from melange.solver.cli.profile_command import slo_from_flags
from melange.solver.errors import InputError, UnavailableError
from melange.solver.ilp import DEFAULT_SOLVER, SOLVERS, IlpSettings
from melange.solver.metrics.metric_names import DEFAULT_MIN_REQUESTS, MODEL_LABEL
from melange.solver.inputs import (LoadedInputs, assemble, load_bundle, load_document, load_options, load_profiles,
                                   load_trace_workload, load_workload)
from melange.solver.problem import Problem
from melange.solver.profiles import Slo
from melange.solver.solve import MODES, solve
from melange.solver.workload import Workload


class MetricsUnavailable(UnavailableError):
    """The live workload cannot be trusted enough to solve on (no series, stale series)."""

    what = "metrics"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `melange solve`."""
    parser = commands.add_parser("solve", help="cheapest GPU mix for a workload, no cluster needed",
                                 description="Solve the Mélange ILP: the cheapest mix of GPU options that serves "
                                             "the workload within the profiles' SLO.")
    parser.add_argument("bundle", nargs="?", type=Path,
                        help="one file with workload, options and profiles (YAML/JSON), or a melange-release "
                             "JSON config")
    inputs = parser.add_argument_group("separate inputs (instead of, or overriding, the bundle)")
    inputs.add_argument("--workload", type=Path, help="workload YAML {rate, grid, distribution}")
    inputs.add_argument("--trace", type=Path, help="request trace (CSV or JSONL of input/output token counts)")
    inputs.add_argument("--grid", type=Path, help="grid YAML {input_edges, output_edges} for --trace "
                                                  "(default: the paper's 10x6 grid)")
    inputs.add_argument("--rate", type=float, help="total request rate, req/s (overrides the workload's)")
    inputs.add_argument("--options", type=Path, help="GPU options YAML")
    live = parser.add_argument_group("live workload from Prometheus (vLLM metrics; instead of --workload/--trace)")
    live.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://prometheus:9090")
    live.add_argument("--model-name", help="vLLM's model_name label to select")
    live.add_argument("--selector", action="append", default=[], metavar="LABEL=VALUE",
                      help="more label matchers (namespace, job, ...); repeatable")
    live.add_argument("--window", default="10m", help="rate and mix window (default 10m)")
    live.add_argument("--bearer-token-file", help="file holding a bearer token")
    live.add_argument("--bearer-token-env", help="environment variable holding a bearer token")
    live.add_argument("--ca-bundle", help="CA bundle for https")
    live.add_argument("--min-requests", type=int, default=DEFAULT_MIN_REQUESTS,
                      help=f"requests in the window below which the mix is flagged untrustworthy "
                           f"(default {DEFAULT_MIN_REQUESTS})")
    inputs.add_argument("--profiles", type=Path, nargs="+", help="profile YAML file(s)")
    catalog = parser.add_argument_group("GPU catalog (instead of --options/--profiles: estimated profiles, no profiling)")
    catalog.add_argument("--model", help="catalog model (e.g. llama-3-8b) or a Hugging Face config.json path")
    catalog.add_argument("--gpus", help="GPU types to mix, with GPUs per replica where above 1: l4,a10g,h100:2")
    catalog.add_argument("--tpot-ms", type=float, help="mean TPOT SLO in ms (default 120 unless --ttft-ms is given)")
    catalog.add_argument("--ttft-ms", type=float, help="mean TTFT SLO in ms")
    catalog.add_argument("--price", action="append", default=[], metavar="GPU=USD",
                         help="override a catalog price ($/h per GPU); repeatable")
    catalog.add_argument("--catalog", type=Path, action="append", default=[],
                         help="extra catalog file (GPUs and models); repeatable")
    model = parser.add_argument_group("model")
    model.add_argument("--mode", choices=MODES, default="paper",
                       help="paper: split per (input, output) bucket as in the paper; routable: split per input "
                            "bucket, which a router can enforce (default: paper; the other is reported beside)")
    model.add_argument("--slice-factor", type=int, help="slices per bucket (paper: 8)")
    model.add_argument("--solver", choices=SOLVERS, help=f"MIP solver (default: {DEFAULT_SOLVER})")
    model.add_argument("--time-limit", type=float, help="solver time limit, seconds")
    model.add_argument("--target-utilisation", type=float, help="load per replica at most this (0-1], headroom")
    model.add_argument("--min-replicas", type=int, help="at least this many replicas in total")
    model.add_argument("--max-spot-share", type=float, help="at most this share (0-1) of requests on spot options")
    model.add_argument("--current", help="current replicas as NAME=N,NAME=N (for --move-cost)")
    model.add_argument("--move-cost", type=float, help="$/h charged per replica added or removed vs --current")
    parser.add_argument("--output", choices=("table", "json"), default="table", help="table (default) or json")
    parser.add_argument("--splits", action="store_true", help="also print how each bucket is split (table output)")
    parser.set_defaults(handler=run)


def _parse_current(value: str | None) -> dict[str, int]:
    if not value:
        return {}
    current = {}
    for part in value.split(","):
        name, sep, count = part.partition("=")
        if not sep or not name.strip():
            raise InputError("--current", f"cannot read {part!r}", "NAME=N,NAME=N")
        try:
            current[name.strip()] = integer(int(count), f"--current {name.strip()}", minimum=0)
        except ValueError:
            raise InputError("--current", f"{count!r} is not a whole number", "NAME=N with N >= 0") from None
    return current


def _live_workload(args: argparse.Namespace, grid: BucketGrid) -> Workload:
    """The workload measured by Prometheus; refuses to go on without a trustworthy rate."""
    from melange.solver.metrics.prometheus_source import PrometheusConfig, PrometheusSource, parse_duration, read_bearer_token
    selector = {}
    for item in args.selector:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError("--selector", f"cannot read {item!r}", "LABEL=VALUE")
        selector[name.strip()] = value
    if args.model_name:
        selector[MODEL_LABEL] = args.model_name
    if not selector:
        raise InputError("--prometheus", "no selector", "--model-name NAME and/or --selector LABEL=VALUE")
    config = PrometheusConfig(url=args.prometheus, selector=selector, window_s=parse_duration(args.window, "--window"),
                              bearer_token=read_bearer_token(args.bearer_token_file, args.bearer_token_env),
                              ca_bundle=args.ca_bundle, min_requests=args.min_requests)
    live = PrometheusSource(config).workload(grid)
    if live.workload is None or live.status in ("no_series", "stale"):
        raise MetricsUnavailable(f"{args.prometheus}: {live.status}: {'; '.join(live.notes)}")
    workload = live.workload
    return Workload(workload.rate, workload.grid, workload.distribution,
                    (f"live workload from {args.prometheus} over {args.window}: {live.requests_in_window:.0f} "
                     f"requests, status {live.status}",) + workload.notes)


def catalog_slo(tpot_ms: float | None, ttft_ms: float | None) -> Slo:
    """The SLO from --tpot-ms/--ttft-ms; mean TPOT 120 ms (the paper's relaxed SLO) when neither is given."""
    return slo_from_flags(120.0 if tpot_ms is None and ttft_ms is None else tpot_ms, ttft_ms)


def _catalog_inputs(args: argparse.Namespace) -> LoadedInputs:
    """Options and estimated profiles from the catalog, for the workload of the flags."""
    from melange.solver.profiling.catalog import load_catalog, resolve_model
    from melange.solver.profiling.catalog_inputs import catalog_options_and_profiles, parse_gpu_choices, parse_prices
    if not args.gpus:
        raise InputError("--model", "given without --gpus", "--gpus l4,a10g,... with --model")
    if args.bundle is not None or args.options or args.profiles:
        raise InputError("--model", "given with a bundle, --options or --profiles", "one source of GPU options")
    catalog = load_catalog(args.catalog)
    model = resolve_model(catalog, args.model)
    if args.prometheus:
        workload = _live_workload(args, paper_grid())
        if args.rate is not None:
            workload = workload.with_rate(args.rate)
    elif args.workload or args.trace:
        workload = _workload_from_flags(args)
    else:
        raise InputError("--model", "no workload", "--trace, --workload or --prometheus")
    options, profiles = catalog_options_and_profiles(catalog, model, parse_gpu_choices(args.gpus),
                                                     catalog_slo(args.tpot_ms, args.ttft_ms), workload.grid,
                                                     parse_prices(args.price))
    return assemble(workload, options, profiles)


def read_inputs(args: argparse.Namespace) -> LoadedInputs:
    """Assemble the problem from a bundle and/or separate files; flags override the bundle."""
    if args.rate is not None:
        number(args.rate, "--rate", minimum=0)
    if args.model or args.gpus:
        if not args.model:
            raise InputError("--gpus", "given without --model", "--model NAME with --gpus")
        return _catalog_inputs(args)
    if args.prometheus and (args.workload or args.trace):
        raise InputError("--prometheus", "given with --workload/--trace", "one workload source")
    if args.prometheus:
        if args.bundle is not None:
            base = load_bundle(args.bundle)
            options, profiles, settings = base.problem.options, base.problem.profiles, base.settings
        else:
            if not args.options or not args.profiles:
                raise InputError("--prometheus", "needs GPU options and profiles", "a BUNDLE, or --options and --profiles")
            options, profiles, settings = load_options(args.options), [p for f in args.profiles for p in load_profiles(f)], {}
        if not profiles:
            raise InputError("--profiles", "no profiles given")
        workload = _live_workload(args, profiles[0].grid)
        if args.rate is not None:
            workload = workload.with_rate(args.rate)
        return LoadedInputs(assemble(workload, options, profiles).problem, settings)
    if args.bundle is not None:
        loaded = load_bundle(args.bundle)
        problem = loaded.problem
        if args.workload or args.trace:
            workload = _workload_from_flags(args)
            loaded = LoadedInputs(assemble(workload, problem.options, problem.profiles).problem, loaded.settings)
        elif args.rate is not None:
            loaded = LoadedInputs(Problem(problem.workload.with_rate(args.rate), problem.options, problem.profiles),
                                  loaded.settings)
        return loaded
    missing = [flag for flag, value in (("--workload or --trace", args.workload or args.trace),
                                        ("--options", args.options), ("--profiles", args.profiles)) if not value]
    if missing:
        raise InputError("melange solve", f"missing {', '.join(missing)}", "a BUNDLE file, or --workload/--trace, "
                                                                           "--options and --profiles")
    profiles = [p for path in args.profiles for p in load_profiles(path)]
    return assemble(_workload_from_flags(args), load_options(args.options), profiles)


def _workload_from_flags(args: argparse.Namespace):
    if args.trace:
        grid = grid_from_dict(load_document(args.grid), str(args.grid)) if args.grid else None
        return load_trace_workload(args.trace, grid, args.rate)
    workload = load_workload(args.workload)
    return workload.with_rate(args.rate) if args.rate is not None else workload


def settings_from(args: argparse.Namespace, file_settings: dict[str, Any]) -> IlpSettings:
    """Solver settings: the file's, then the flags'."""
    allowed = {"slice_factor", "solver", "time_limit_s", "target_utilisation", "min_total_replicas",
               "max_spot_share", "move_cost", "mode"}
    unknown = sorted(set(file_settings) - allowed)
    if unknown:
        raise InputError(f"settings.{unknown[0]}", "unknown setting", ", ".join(sorted(allowed)))
    values = {k: v for k, v in file_settings.items() if k != "mode"}
    flags = {"slice_factor": args.slice_factor, "solver": args.solver, "time_limit_s": args.time_limit,
             "target_utilisation": args.target_utilisation, "min_total_replicas": args.min_replicas,
             "max_spot_share": args.max_spot_share, "move_cost": args.move_cost}
    values.update({k: v for k, v in flags.items() if v is not None})
    for key in ("target_utilisation", "max_spot_share", "move_cost", "time_limit_s"):
        if values.get(key) is not None:
            values[key] = number(values[key], key)
    for key in ("slice_factor", "min_total_replicas"):
        if key in values:
            values[key] = integer(values[key], key)
    return IlpSettings(current=_parse_current(args.current), **values)


def run(args: argparse.Namespace) -> int:
    """Solve and print the report (table or JSON)."""
    loaded = read_inputs(args)
    settings = settings_from(args, dict(loaded.settings))
    mode = args.mode if args.mode != "paper" else loaded.settings.get("mode", "paper")
    report = solve(loaded.problem, settings, mode=mode)
    if not report.allocation.solved:
        raise InputError("infeasible", f"the solver found no allocation ({report.allocation.status}): quotas, "
                                       "the spot share or the time limit leave no feasible mix")
    if args.output == "json":
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report, loaded.problem, show_splits=args.splits))
    return 0


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_table(report: SolveReport, problem: Problem, show_splits: bool = False) -> str:
    """The human-readable report of a solve."""
    allocation = report.allocation
    lines = [f"Mélange allocation, {allocation.mode} mode, rate {report.rate:g} req/s "
             f"({allocation.solver}: {allocation.status}"
             + (f", gap <= {100 * allocation.gap:.2f}%" if allocation.status == "feasible" and allocation.gap is not None
                else "") + f", {1000 * allocation.wall_time_s:.1f} ms)", ""]
    header = f"{'option':<16} {'replicas':>8} {'GPUs':>5} {'$/h':>9} {'req/s':>9} {'util':>6}   " \
             f"{'alone: replicas':>15} {'$/h':>9}  profile"
    lines += [header, "-" * len(header)]
    for use in allocation.options:
        alone = report.single_type_replicas[use.name]
        util = "-" if use.utilisation is None else f"{100 * use.utilisation:.0f}%"
        lines.append(f"{use.name:<16} {use.replicas:>8} {use.gpus:>5} {_money(use.cost_per_hour):>9} "
                     f"{use.request_rate:>9.3f} {util:>6}   {('-' if alone is None else alone):>15} "
                     f"{_money(report.single_type[use.name]):>9}  {report.profile_sources.get(use.name, '')}")
    lines.append("-" * len(header))
    lines.append(f"{'mix':<16} {sum(u.replicas for u in allocation.options):>8} "
                 f"{sum(u.gpus for u in allocation.options):>5} {_money(allocation.cost_per_hour):>9}")
    lines.append("")
    for label, pick in (("best", report.best_single), ("worst", report.worst_single)):
        if pick:
            lines.append(f"vs {label} single type ({pick[0]}, ${pick[1]:.3f}/h): "
                         f"saves {report.savings_percent(pick[1]):.2f}%")
    if report.best_single is None:
        lines.append("no single option can serve this workload alone")
    if report.other_mode is not None:
        other = report.other_mode
        cost = f"${other.cost_per_hour:.3f}/h" if other.solved else other.status
        mix = ", ".join(f"{n} x{r}" for n, r in other.replicas.items() if r)
        lines.append(f"{other.mode} mode: {cost} ({mix})")
    sources = set(report.profile_sources.values())
    if "estimated" in sources:
        lines.append("note: some profiles are estimates from specs, not measurements")
    lines += [f"note: {note}" for note in report.notes]
    if show_splits:
        lines += ["", "split per bucket (share of its requests per option):"]
        for split in allocation.splits:
            shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in split.shares.items() if share > 0)
            lines.append(f"  {split.label:<28} {split.rate:>9.4f} req/s  {shares}")
    return "\n".join(lines) + "\n"
