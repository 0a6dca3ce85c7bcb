"""`melange profile estimate|measure`: build a profile from specs in seconds, or measure a live
OpenAI-compatible server (vLLM, SGLang) bucket by bucket.

The profiling modules (numpy, aiohttp) are imported by the subcommand that runs them, so that
`melange solve`, which registers its flags beside these, does not load them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from melange.solver.buckets import BucketGrid, grid_from_dict, paper_grid
from melange.solver.checks import number, require_keys, require_mapping
from melange.solver.errors import InputError
from melange.solver.inputs import dump_yaml, load_document
from melange.solver.profiles import Profile, Slo

if TYPE_CHECKING:
    from melange.solver.profiling.perf_model import PerfConstants


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="catalog model (e.g. llama-3-8b) or a config.json path")
    parser.add_argument("--gpu", required=True, help="catalog GPU (e.g. l4, a10g, h100)")
    parser.add_argument("--tp", type=int, default=1, help="GPUs per replica (tensor parallelism), default 1")
    parser.add_argument("--tpot-ms", type=float, help="TPOT SLO in ms, request latency / output tokens as in the "
                                                      "paper (default: none; give it and/or --ttft-ms)")
    parser.add_argument("--ttft-ms", type=float, help="TTFT SLO in ms (default: none)")
    parser.add_argument("--grid", type=Path, help="grid YAML {input_edges, output_edges} (default: the paper's 10x6)")
    parser.add_argument("--catalog", type=Path, action="append", default=[],
                        help="extra catalog file; repeatable (default: the shipped catalog)")
    parser.add_argument("--output", "-o", type=Path, help="write the profile YAML here (default: stdout)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `melange profile` and its two subcommands."""
    profile = commands.add_parser("profile", help="build a GPU performance profile (estimate or measure)",
                                  description="Build the profile the solver needs: per request-size bucket, the "
                                              "highest request rate one replica sustains within the SLO.")
    kinds = profile.add_subparsers(dest="kind", required=True, parser_class=type(profile))
    estimate = kinds.add_parser(
        "estimate", help="estimate from GPU and model specs (seconds, no GPU)",
        description="Estimate a profile from the catalog's GPU and model specs with a roofline and "
                    "continuous-batching model: per bucket, the highest request rate (req/s) one replica sustains "
                    "within the SLO. Seconds, no GPU needed.")
    _common(estimate)
    estimate.add_argument("--constants", type=Path,
                          help="performance-model constants YAML, e.g. from measure --fit (default: the shipped fit)")
    estimate.set_defaults(handler=_run_estimate)
    measure = kinds.add_parser(
        "measure", help="measure a live OpenAI-compatible server",
        description="Measure a live OpenAI-compatible server (vLLM, SGLang) bucket by bucket: Poisson arrivals of "
                    "fixed-size requests, the rate doubled then bisected until a trial misses the SLO. Progress "
                    "goes to stderr and is kept in a state file, so a rerun resumes. Exit status 3 when the "
                    "server cannot be reached.")
    _common(measure)
    measure.add_argument("--endpoint", required=True, help="server base URL, e.g. http://vllm:8000")
    measure.add_argument("--served-model", help="model name the server expects in requests (default: its first "
                                                "/v1/models entry)")
    measure.add_argument("--percentile", type=float,
                         help="judge the SLO at this percentile, 0-100, instead of the mean (default: the mean)")
    measure.add_argument("--trial-seconds", type=float, default=30.0,
                         help="arrivals per trial span about this many seconds (default 30)")
    measure.add_argument("--min-requests", type=int, default=20, help="requests per trial, at least (default 20)")
    measure.add_argument("--max-requests", type=int, default=400, help="requests per trial, at most (default 400)")
    measure.add_argument("--precision", type=float, default=0.05,
                         help="stop the rate search at this relative width (default 0.05, i.e. 5%%)")
    measure.add_argument("--prompt", choices=("tokens", "text"), default="tokens",
                         help="send prompts as token ids (exact length; vLLM, SGLang) or as text (default: tokens)")
    measure.add_argument("--state", type=Path, help="progress file for resuming (default: OUTPUT.state.json, none "
                                                    "without --output)")
    measure.add_argument("--fit", action="store_true",
                         help="measure a few buckets only and fit the estimator's constants to them")
    measure.add_argument("--seed", type=int, default=0, help="seed of the arrival times (default 0)")
    measure.set_defaults(handler=_run_measure)


def slo_from_flags(tpot_ms: float | None, ttft_ms: float | None, percentile: float | None = None) -> Slo:
    """The SLO of --tpot-ms/--ttft-ms/--percentile, checked; at least one bound."""
    if tpot_ms is None and ttft_ms is None:
        raise InputError("melange profile", "no SLO", "--tpot-ms and/or --ttft-ms")
    for flag, value in (("--tpot-ms", tpot_ms), ("--ttft-ms", ttft_ms)):
        if value is not None:
            number(value, flag, minimum=0, strict_minimum=True)
    if percentile is not None:
        number(percentile, "--percentile", minimum=0, strict_minimum=True, maximum=100)
    return Slo(tpot_ms, ttft_ms, percentile)


def _grid(args: argparse.Namespace) -> BucketGrid:
    return grid_from_dict(load_document(args.grid), str(args.grid)) if args.grid else paper_grid()


def load_constants(path: Path | None) -> PerfConstants:
    """Performance-model constants from a YAML mapping, or from a profile that records them (an
    estimate, e.g. the output of `measure --fit`); missing ones keep their defaults."""
    from melange.solver.profiling.perf_model import PerfConstants
    if path is None:
        return PerfConstants()
    data = require_mapping(load_document(path), str(path))
    where = str(path)
    if isinstance(data.get("provenance"), dict) and "constants" in data["provenance"]:
        data, where = data["provenance"]["constants"], f"{path}.provenance.constants"
    elif "constants" in data:
        data, where = data["constants"], f"{path}.constants"
    data = require_mapping(data, where)
    require_keys(data, where, [], list(PerfConstants().to_dict()))
    return PerfConstants(**{k: number(v, f"{where}.{k}", minimum=0) for k, v in data.items()})


def check_output_path(path: Path | None, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work is done: a folder, or a file in
    a folder that does not exist."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(flag, f"{path} is a folder", "a file path, e.g. l4.yaml")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(flag, f"folder {parent} does not exist", "a file in an existing folder")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(flag, f"{path} is not writable", "a file you may write")


def write_profile(profile: Profile, output: Path | None) -> None:
    """The profile as YAML, to a file or stdout."""
    text = dump_yaml(profile.to_dict())
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)


def _run_estimate(args: argparse.Namespace) -> int:
    from melange.solver.profiling.catalog import load_catalog, resolve_model
    from melange.solver.profiling.estimate import estimate_profile
    check_output_path(args.output, "--output")
    catalog = load_catalog(args.catalog)
    profile = estimate_profile(resolve_model(catalog, args.model), catalog.gpu(args.gpu),
                               slo_from_flags(args.tpot_ms, args.ttft_ms),
                               _grid(args), tensor_parallel=args.tp, constants=load_constants(args.constants))
    write_profile(profile, args.output)
    return 0


def _run_measure(args: argparse.Namespace) -> int:
    from melange.solver.profiling.catalog import load_catalog, resolve_model
    from melange.solver.profiling.measure import MeasureConfig, measure_profile
    check_output_path(args.output, "--output")
    check_output_path(args.state, "--state")
    catalog = load_catalog(args.catalog)
    model = resolve_model(catalog, args.model)
    gpu = catalog.gpu(args.gpu)
    for flag in ("trial_seconds", "precision"):
        number(getattr(args, flag), f"--{flag.replace('_', '-')}", minimum=0, strict_minimum=True)
    if not 1 <= args.min_requests <= args.max_requests:
        raise InputError("--min-requests", f"{args.min_requests} with --max-requests {args.max_requests}",
                         "1 <= --min-requests <= --max-requests")
    state = args.state or (args.output.with_suffix(args.output.suffix + ".state.json") if args.output else None)
    config = MeasureConfig(endpoint=args.endpoint.rstrip("/"), served_model=args.served_model,
                           slo=slo_from_flags(args.tpot_ms, args.ttft_ms, args.percentile), grid=_grid(args), trial_seconds=args.trial_seconds,
                           min_requests=args.min_requests, max_requests=args.max_requests,
                           precision=args.precision, prompt=args.prompt, seed=args.seed)
    profile = measure_profile(config, model, gpu, args.tp, state_path=state, fit=args.fit)
    write_profile(profile, args.output)
    return 0
