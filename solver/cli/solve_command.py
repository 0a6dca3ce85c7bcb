"""`melange solve`: the cheapest mix of GPU options for a workload, no cluster needed.

The catalog (`--model`) and Prometheus (`--prometheus`) paths import their modules when used, so a
solve on a bundle loads only the core. A flag that the chosen inputs would ignore is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from collections.abc import Mapping

from melange.solver.allocation import SolveReport
from melange.solver.buckets import BucketGrid, grid_from_dict, paper_grid
from melange.solver.checks import integer, number
from melange.solver.cli.profile_command import slo_from_flags
from melange.solver.errors import InputError, UnavailableError
from melange.solver.ilp import DEFAULT_SOLVER, SOLVERS, IlpSettings, check_settings
from melange.solver.metrics.metric_names import DEFAULT_MIN_REQUESTS, MODEL_LABEL
from melange.solver.inputs import (LoadedInputs, assemble, check_profile_grids, load_bundle, load_document,
                                   load_options, load_profile_files, load_trace_workload, load_workload)
from melange.solver.problem import Problem
from melange.solver.profiles import Profile, Slo, scale_profile
from melange.solver.solve import MODES, solve
from melange.solver.workload import Workload

DEFAULT_WINDOW = "10m"
DEFAULT_TPOT_MS = 120.0  # the paper's relaxed SLO: mean TPOT 120 ms
RATE_FLAG_SOURCE = "given by --rate"


class MetricsUnavailable(UnavailableError):
    """The live workload cannot be trusted enough to solve on (no series, stale series)."""

    what = "metrics"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `melange solve`."""
    parser = commands.add_parser(
        "solve", help="cheapest GPU mix for a workload, no cluster needed",
        description="Solve the Mélange ILP: the cheapest mix of GPU options (replicas per option, $/h) that serves "
                    "the workload within the profiles' SLO. Inputs: a BUNDLE, or separate --workload/--trace, "
                    "--options and --profiles, or the catalog (--model, --gpus); the workload may come from "
                    "Prometheus (--prometheus). Exit status 2: bad input; 3: a server unavailable.")
    groups = add_input_arguments(parser)
    groups["inputs"].add_argument("--rate", type=float, help="total request rate in req/s (default: the workload's, "
                                                             "or the trace's timestamps)")
    groups["catalog"].add_argument("--tpot-ms", type=float,
                                   help=f"mean TPOT SLO in ms (default {DEFAULT_TPOT_MS:g} unless --ttft-ms is given)")
    add_model_arguments(parser, single_solve=True)
    parser.add_argument("--output", choices=("table", "json"), default="table", help="table (default) or json")
    parser.add_argument("--splits", action="store_true", help="also print how each bucket is split (table output)")
    parser.set_defaults(handler=run)


def add_input_arguments(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """The input flags `melange solve` and `melange sweep` share (what `read_inputs` reads, less --rate
    and --tpot-ms, which each command adds in its own form); returns the groups by name."""
    parser.add_argument("bundle", nargs="?", type=Path,
                        help="one file with workload, options and profiles (YAML/JSON), or a melange-release "
                             "JSON config")
    inputs = parser.add_argument_group("separate inputs (instead of, or overriding, the bundle)")
    inputs.add_argument("--workload", type=Path, help="workload YAML {rate, grid, distribution}")
    inputs.add_argument("--trace", type=Path,
                        help="request trace: CSV, JSONL or JSON of input/output token counts, optionally arrival "
                             "timestamps in seconds")
    inputs.add_argument("--grid", type=Path, help="grid YAML {input_edges, output_edges} to bin --trace on "
                                                  "(default: the profiles' grid, or the paper's 10x6 with --model)")
    inputs.add_argument("--options", type=Path, help="GPU options YAML")
    inputs.add_argument("--profiles", type=Path, nargs="+", help="profile YAML file(s)")
    live = parser.add_argument_group("live workload from Prometheus (vLLM metrics; instead of --workload/--trace)")
    live.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://prometheus:9090")
    live.add_argument("--model-name", help="vLLM's model_name label to select")
    live.add_argument("--selector", action="append", default=[], metavar="LABEL=VALUE",
                      help="more label matchers (namespace, job, ...); repeatable")
    live.add_argument("--window", help=f"rate and mix window, a duration such as 30s, 10m, 1h (default {DEFAULT_WINDOW})")
    live.add_argument("--bearer-token-file", help="file holding a bearer token (default: none)")
    live.add_argument("--bearer-token-env", help="environment variable holding a bearer token (default: none)")
    live.add_argument("--ca-bundle", help="CA bundle for https (default: the system's)")
    live.add_argument("--min-requests", type=int,
                      help=f"requests in the window below which the mix is flagged untrustworthy "
                           f"(default {DEFAULT_MIN_REQUESTS})")
    catalog = parser.add_argument_group("GPU catalog (instead of --options/--profiles: estimated profiles, no profiling)")
    catalog.add_argument("--model", help="catalog model (e.g. llama-3-8b) or a Hugging Face config.json path")
    catalog.add_argument("--gpus", help="GPU types to mix, with GPUs per replica where above 1: l4,a10g,h100:2")
    catalog.add_argument("--ttft-ms", type=float, help="mean TTFT SLO in ms (default: none)")
    catalog.add_argument("--price", action="append", default=[], metavar="GPU=USD",
                         help="override a catalog price, $/h per GPU; repeatable (default: the catalog's)")
    catalog.add_argument("--pricing", choices=("gpu", "node"),
                         help="gpu: a replica costs its GPUs (the paper's model); node: options are bought in whole "
                              "instances of the catalog's cheapest instance type carrying them, e.g. an A100 "
                              "replica costs a p4de.24xlarge's 8 GPUs (default: gpu)")
    catalog.add_argument("--catalog", type=Path, action="append", default=[],
                         help="extra catalog file (GPUs and models); repeatable (default: the shipped catalog)")
    return {"inputs": inputs, "live": live, "catalog": catalog}


def add_model_arguments(parser: argparse.ArgumentParser, *, single_solve: bool) -> None:
    """The solver flags that `settings_from` reads. A `single_solve` also reports the other mode and
    takes --current and --move-cost (moves against a current allocation); otherwise those read as unset."""
    model = parser.add_argument_group("model")
    model.add_argument("--mode", choices=MODES, default="paper",
                       help="paper: split per (input, output) bucket as in the paper; routable: split per input "
                            "bucket, which a router can enforce (default: paper"
                            + ("; the other is reported beside)" if single_solve else ")"))
    model.add_argument("--slice-factor", type=int, help="slices per bucket (default: the file's, else 8 as the paper)")
    model.add_argument("--solver", choices=SOLVERS, help=f"MIP solver (default: {DEFAULT_SOLVER})")
    model.add_argument("--time-limit", type=float, help="solver time limit in seconds (default: none)")
    model.add_argument("--target-utilisation", type=float,
                       help="load per replica at most this share, 0 < U <= 1, for headroom (default 1)")
    model.add_argument("--min-replicas", type=int, help="at least this many replicas in total (default 0)")
    model.add_argument("--max-spot-share", type=float,
                       help="at most this share (0-1) of requests on spot options (default: no limit)")
    if single_solve:
        model.add_argument("--current", help="current replicas as NAME=N,NAME=N; needs --move-cost (default: none)")
        model.add_argument("--move-cost", type=float,
                           help="$/h charged per replica added or removed vs --current (default 0)")
        model.add_argument("--correction", action="append", default=[], metavar="OPTION=FACTOR",
                           help="multiply the option's profile (its max rates) by FACTOR, as the operator's "
                                "status.profileCorrections does; repeatable (default: none)")
    else:
        parser.set_defaults(current=None, move_cost=None, correction=[])


# Flags that only a given input source reads: given without it, they would be silently ignored.
_CATALOG_FLAGS = {"tpot_ms": "--tpot-ms", "ttft_ms": "--ttft-ms", "price": "--price", "catalog": "--catalog",
                  "pricing": "--pricing"}
_LIVE_FLAGS = {"window": "--window", "selector": "--selector", "model_name": "--model-name",
               "bearer_token_file": "--bearer-token-file", "bearer_token_env": "--bearer-token-env",
               "ca_bundle": "--ca-bundle", "min_requests": "--min-requests"}


def refuse_unused_flags(args: argparse.Namespace) -> None:
    """Refuse a flag that the chosen inputs would ignore, naming what it needs."""
    if not args.model:
        for attribute, flag in _CATALOG_FLAGS.items():
            if getattr(args, attribute) not in (None, []):
                raise InputError(flag, "only applies to catalog GPUs (--model, --gpus); the profiles and options "
                                       "given set their own SLO and prices",
                                 "edit the options' price_per_hour, or solve with --model and --gpus")
    if not args.prometheus:
        for attribute, flag in _LIVE_FLAGS.items():
            if getattr(args, attribute) not in (None, []):
                raise InputError(flag, "only applies with --prometheus URL", "--prometheus URL with it, or leave it out")
    if args.grid and not args.trace:
        raise InputError("--grid", "only applies with --trace", "--trace FILE with it, or leave it out")
    if args.current and args.move_cost is None:
        raise InputError("--current", "given without --move-cost, so it would change nothing",
                         "--move-cost USD_PER_HOUR with --current")


def _option_assignment(flag: str, part: str, form: str, option_names: list[str], aliases: Mapping[str, str],
                       known: str) -> tuple[str, str]:
    """One NAME=VALUE of a per-option flag: the option's name (NAME may be a GPU alias) and the value's
    text; an unreadable part or an unknown name is refused naming the flag (`form`: what is readable,
    `known`: the options as the message lists them)."""
    typed, sep, text = part.partition("=")
    typed = typed.strip()
    if not sep or not typed:
        raise InputError(flag, f"cannot read {part!r}", form)
    name = typed if typed in option_names else aliases.get(typed.lower(), typed)
    if name not in option_names:
        raise InputError(flag, f"{typed!r} is not one of the options", known)
    return name, text


def _parse_current(value: str | None, option_names: list[str], aliases: Mapping[str, str] | None = None
                   ) -> dict[str, int]:
    """--current NAME=N,...: each NAME an option's name or (catalog options) one of its GPU's aliases."""
    if not value:
        return {}
    aliases = aliases or {}
    current = {}
    def also(option: str) -> str:
        other = sorted(k for k, v in aliases.items() if v == option and k != option and ":" not in k)
        return f"{option} (also {', '.join(other)})" if other else option

    known = ", ".join(also(option) for option in option_names)
    for part in value.split(","):
        name, count = _option_assignment("--current", part, "NAME=N,NAME=N", option_names, aliases, known)
        try:
            current[name] = integer(int(count), f"--current {name}", minimum=0)
        except ValueError:
            raise InputError("--current", f"{count!r} is not a whole number", "NAME=N with N >= 0") from None
    return current


def _parse_corrections(values: list[str] | None, option_names: list[str], aliases: Mapping[str, str] | None = None
                       ) -> dict[str, float]:
    """--correction NAME=FACTOR (repeatable, or comma-separated): each NAME an option's name or one of
    its GPU's aliases, FACTOR a positive number."""
    aliases = aliases or {}
    factors: dict[str, float] = {}
    for part in [p for value in values or [] for p in value.split(",") if p.strip()]:
        name, text = _option_assignment("--correction", part, "OPTION=FACTOR, e.g. a10g=0.8", option_names, aliases,
                                        ", ".join(option_names))
        try:
            factor = float(text)
        except ValueError:
            raise InputError("--correction", f"{text!r} is not a number", "OPTION=FACTOR with FACTOR > 0") from None
        factors[name] = number(factor, f"--correction {name}", minimum=0, strict_minimum=True, maximum=10)
    return factors


def apply_corrections(args: argparse.Namespace, loaded: LoadedInputs) -> LoadedInputs:
    """The inputs with each --correction applied to its option's profile."""
    factors = _parse_corrections(getattr(args, "correction", None), [o.name for o in loaded.problem.options],
                                 loaded.aliases)
    if not factors:
        return loaded
    problem = loaded.problem
    profiles = tuple(scale_profile(p, factors.get(o.name, 1.0)) for o, p in zip(problem.options, problem.profiles))
    notes = tuple(problem.workload.notes) + (
        "capacity corrections: " + ", ".join(f"{name} x{factor:g}" for name, factor in factors.items()),)
    workload = dataclasses.replace(problem.workload, notes=notes)
    return dataclasses.replace(loaded, problem=dataclasses.replace(problem, workload=workload, profiles=profiles))


def _live_workload(args: argparse.Namespace, grid: BucketGrid) -> Workload:
    """The workload measured by Prometheus; refuses to go on without a trustworthy rate."""
    from melange.solver.metrics.prometheus_source import (PrometheusConfig, PrometheusSource, parse_duration,
                                                          read_bearer_token)
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
    window = args.window or DEFAULT_WINDOW
    min_requests = DEFAULT_MIN_REQUESTS if args.min_requests is None else args.min_requests
    config = PrometheusConfig(url=args.prometheus, selector=selector, window_s=parse_duration(window, "--window"),
                              bearer_token=read_bearer_token(args.bearer_token_file, args.bearer_token_env),
                              ca_bundle=args.ca_bundle, min_requests=integer(min_requests, "--min-requests", minimum=0))
    live = PrometheusSource(config).workload(grid)
    if live.workload is None or live.status in ("no_series", "stale"):
        raise MetricsUnavailable(f"{args.prometheus}: {live.status}: {'; '.join(live.notes)}")
    workload = live.workload
    span = f"the last {window}" if live.span_s is None else \
        f"the {live.span_s:.0f} s its series cover (younger than --window {window})"
    return Workload(workload.rate, workload.grid, workload.distribution,
                    (f"live workload from {args.prometheus}: {live.requests_in_window:.0f} requests over {span}, "
                     f"status {live.status}",) + workload.notes,
                    f"measured by Prometheus at {args.prometheus} over {span}")


def catalog_slo(tpot_ms: float | None, ttft_ms: float | None) -> Slo:
    """The SLO from --tpot-ms/--ttft-ms; mean TPOT 120 ms (the paper's relaxed SLO) when neither is given."""
    return slo_from_flags(DEFAULT_TPOT_MS if tpot_ms is None and ttft_ms is None else tpot_ms, ttft_ms)


def _catalog_inputs(args: argparse.Namespace) -> LoadedInputs:
    """Options and estimated profiles from the catalog, for the workload of the flags."""
    from melange.solver.profiling.catalog import load_catalog, resolve_model
    from melange.solver.profiling.catalog_inputs import (catalog_options_and_profiles, option_aliases,
                                                         parse_gpu_choices, parse_prices)
    if not args.gpus:
        raise InputError("--model", "given without --gpus", "--gpus l4,a10g,... with --model")
    if args.bundle is not None or args.options or args.profiles:
        raise InputError("--model", "given with a bundle, --options or --profiles", "one source of GPU options")
    catalog = load_catalog(args.catalog)
    model = resolve_model(catalog, args.model)
    if args.prometheus:
        workload = _with_rate_flag(_live_workload(args, paper_grid()), args)
    elif args.workload or args.trace:
        workload = _workload_from_flags(args, None)
    else:
        raise InputError("--model", "no workload", "--trace, --workload or --prometheus")
    choices = parse_gpu_choices(args.gpus)
    options, profiles = catalog_options_and_profiles(catalog, model, choices,
                                                     catalog_slo(args.tpot_ms, args.ttft_ms), workload.grid,
                                                     parse_prices(args.price), node_pricing=args.pricing == "node")
    return dataclasses.replace(assemble(workload, options, profiles), aliases=option_aliases(catalog, choices))


def _with_rate_flag(workload: Workload, args: argparse.Namespace) -> Workload:
    return workload if args.rate is None else workload.with_rate(args.rate, RATE_FLAG_SOURCE)


def read_inputs(args: argparse.Namespace) -> LoadedInputs:
    """Assemble the problem from a bundle and/or separate files; flags override the bundle."""
    refuse_unused_flags(args)
    if args.rate is not None:
        number(args.rate, "--rate", minimum=0)
    if args.model or args.gpus:
        if not args.model:
            raise InputError("--gpus", "given without --model", "--model NAME with --gpus")
        return _catalog_inputs(args)
    if args.prometheus and (args.workload or args.trace):
        raise InputError("--prometheus", "given with --workload/--trace", "one workload source")
    if args.bundle is not None:
        if args.options or args.profiles:
            raise InputError("--options" if args.options else "--profiles", "given with a bundle, which has its own",
                             "a BUNDLE, or --options and --profiles")
        loaded = load_bundle(args.bundle)
        problem = loaded.problem
        if args.prometheus:
            workload = _with_rate_flag(_live_workload(args, problem.profiles[0].grid), args)
        elif args.workload or args.trace:
            workload = _workload_from_flags(args, problem.profiles)
        else:
            workload = _with_rate_flag(problem.workload, args)
        return LoadedInputs(assemble(workload, problem.options, problem.profiles).problem, loaded.settings,
                            loaded.settings_where)
    missing = [flag for flag, value in (("--workload, --trace or --prometheus", args.workload or args.trace
                                         or args.prometheus),
                                        ("--options", args.options), ("--profiles", args.profiles)) if not value]
    if missing:
        raise InputError("melange solve", f"missing {', '.join(missing)}", "a BUNDLE file, or --workload/--trace, "
                                                                           "--options and --profiles")
    sourced = load_profile_files(args.profiles)
    profiles = [profile for profile, _ in sourced]
    if args.prometheus:
        workload = _with_rate_flag(_live_workload(args, profiles[0].grid), args)
    else:
        workload = _workload_from_flags(args, profiles)
    check_profile_grids(workload, sourced, str(args.workload or args.trace or args.prometheus))
    return assemble(workload, load_options(args.options), profiles, str(args.options))


def _workload_from_flags(args: argparse.Namespace, profiles: tuple[Profile, ...] | list[Profile] | None) -> Workload:
    """--workload, or --trace binned on --grid (default: the profiles' grid, or the paper's)."""
    if args.trace:
        grid = grid_from_dict(load_document(args.grid), str(args.grid)) if args.grid else None
        if grid is not None and profiles and profiles[0].grid != grid:
            raise InputError("--grid", f"{grid.to_dict()} differs from the profiles' grid {profiles[0].grid.to_dict()}",
                             "leave --grid out to bin the trace on the profiles' grid")
        if grid is None and profiles:
            grid = profiles[0].grid
        return load_trace_workload(args.trace, grid, args.rate, RATE_FLAG_SOURCE if args.rate is not None else None)
    return _with_rate_flag(load_workload(args.workload), args)


# Each setting and the flag that sets it, so an error names what the user typed.
_SETTING_FLAGS = {"slice_factor": "--slice-factor", "solver": "--solver", "time_limit_s": "--time-limit",
                  "target_utilisation": "--target-utilisation", "min_total_replicas": "--min-replicas",
                  "max_spot_share": "--max-spot-share", "move_cost": "--move-cost"}


def settings_from(args: argparse.Namespace, loaded: LoadedInputs) -> IlpSettings:
    """Solver settings: the file's, then the flags'; an error names the flag or the file's field."""
    file_settings, where = dict(loaded.settings), loaded.settings_where
    allowed = set(_SETTING_FLAGS) | {"mode"}
    unknown = sorted(set(file_settings) - allowed)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", "unknown setting", ", ".join(sorted(allowed)))
    values = {k: v for k, v in file_settings.items() if k != "mode"}
    flags = {key: getattr(args, flag[2:].replace("-", "_")) for key, flag in _SETTING_FLAGS.items()}
    flags = {key: value for key, value in flags.items() if value is not None}
    values.update(flags)

    def named(key: str) -> str:
        return _SETTING_FLAGS[key] if key in flags else f"{where}.{key}"

    for key in ("target_utilisation", "max_spot_share", "move_cost", "time_limit_s"):
        if values.get(key) is not None:
            values[key] = number(values[key], named(key))
    for key in ("slice_factor", "min_total_replicas"):
        if key in values:
            values[key] = integer(values[key], named(key))
    settings = IlpSettings(current=_parse_current(args.current, [o.name for o in loaded.problem.options],
                                                  loaded.aliases), **values)
    try:
        check_settings(settings)
    except InputError as error:
        raise InputError(named(error.where.rpartition(".")[2]), error.problem, error.allowed) from None
    return settings


def mode_from(args: argparse.Namespace, loaded: LoadedInputs) -> str:
    """The split mode: --mode when it is not the default, else the file's `settings.mode`, else paper."""
    mode = args.mode if args.mode != "paper" else loaded.settings.get("mode", "paper")
    if mode not in MODES:
        raise InputError(f"{loaded.settings_where}.mode", f"unknown mode {mode!r}", ", ".join(MODES))
    return mode


def run(args: argparse.Namespace) -> int:
    """Solve and print the report (table or JSON)."""
    loaded = apply_corrections(args, read_inputs(args))
    settings = settings_from(args, loaded)
    report = solve(loaded.problem, settings, mode=mode_from(args, loaded))
    if not report.allocation.solved:
        raise InputError("infeasible", why_unsolved(report, loaded.problem, settings))
    if args.output == "json":
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report, loaded.problem, show_splits=args.splits))
    return 0


def why_unsolved(report: SolveReport, problem: Problem, settings: IlpSettings) -> str:
    """Why the solver found no allocation, naming only the limits that are set: the quotas, the spot
    share, the time limit; with none set, what is left is the solver's own numbers."""
    status = report.allocation.status
    limits = []
    quotas = [f"{o.name} <= {o.max_replicas}" for o in problem.options if o.max_replicas is not None]
    if quotas:
        limits.append(f"quotas ({', '.join(quotas)})")
    if settings.max_spot_share is not None:
        limits.append(f"the spot share (at most {settings.max_spot_share:g})")
    if settings.time_limit_s is not None:
        limits.append(f"the time limit ({settings.time_limit_s:g} s)")
    found = f"the solver ({settings.solver}) found no allocation ({status})"
    if limits:
        return f"{found}: {', '.join(limits)} leave no feasible mix"
    alone = [n for n in report.single_type_replicas.values() if n is not None]
    need = f"; the cheapest single type alone needs {min(alone):.3g} replicas" if alone else ""
    return (f"{found} at {report.rate:g} req/s, though no quota, spot share or time limit is set, so no mix "
            f"is ruled out{need}: numbers this large are most likely past the solver's precision; solve a "
            f"smaller rate (the cost grows about linearly with it)")


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def describe_assumptions(report: SolveReport) -> str:
    """One line: the model, the SLO and where the rate came from, which the answer rests on."""
    slo = report.slo.describe() if report.slo is not None else "not stated by the profiles"
    return f"model {report.model or 'not stated by the profiles'}; SLO {slo}; rate {report.rate:g} req/s " \
           f"{report.rate_source}"


def _savings_line(report: SolveReport, label: str, pick: tuple[str, float]) -> str:
    savings = report.savings_percent(pick[1])
    return f"vs {label} single type ({pick[0]}, ${pick[1]:.3f}/h): " + \
        ("no savings to state" if savings is None else f"saves {savings:.2f}%")


def render_table(report: SolveReport, problem: Problem, show_splits: bool = False) -> str:
    """The human-readable report of a solve."""
    allocation = report.allocation
    lines = [f"Mélange allocation, {allocation.mode} mode, rate {report.rate:g} req/s "
             f"({allocation.solver}: {allocation.status}"
             + (f", gap <= {100 * allocation.gap:.2f}%" if allocation.status == "feasible" and allocation.gap is not None
                else "") + f", {1000 * allocation.wall_time_s:.1f} ms)", describe_assumptions(report), ""]
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
    nodes = [f"{use.name} {use.nodes} x {option.gpus_per_node} GPUs at ${option.node_price_per_hour:g}/h "
             f"({use.nodes * option.gpus_per_node - use.gpus} GPUs idle)"
             for option, use in zip(problem.options, allocation.options) if option.node_priced and use.nodes]
    if nodes:
        lines.append("bought as whole nodes: " + "; ".join(nodes))
    lines.append("")
    if report.move_cost > 0:
        moved = ", ".join(f"{name} {delta:+d}" for name, delta in report.moves.items()) or "none"
        lines.append(f"moves vs --current: {moved}; move cost ${report.move_cost_per_hour:.3f}/h "
                     f"(${report.move_cost:g}/h per replica moved), charged by the solve but not in the $/h above")
    if report.rate == 0:
        lines.append("no traffic: the mix is the options' floors (min_replicas), so there are no savings to state")
    else:
        lines += [_savings_line(report, label, pick)
                  for label, pick in (("best", report.best_single), ("worst", report.worst_single)) if pick]
    if report.best_single is None:
        lines.append("no single option can serve this workload alone")
    savings = report.savings_percent(report.best_single[1]) if report.best_single else None
    if savings is not None and savings < 0:
        lines += [f"why the mix costs more: {caveat}" for caveat in report.savings_caveats()]
    if report.other_mode is not None:
        other = report.other_mode
        cost = f"${other.cost_per_hour:.3f}/h" if other.solved else other.status
        mix = ", ".join(f"{n} x{r}" for n, r in other.replicas.items() if r) or "no replicas"
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
