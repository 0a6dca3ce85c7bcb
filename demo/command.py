"""The `melange demo` subcommand's flags; the scenario is imported only when it runs."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from melange.solver.checks import number
from melange.solver.errors import InputError

MIXES = ("chat", "documents")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `melange demo` (called by `melange` through the `melange.commands` entry point)."""
    parser = commands.add_parser(
        "demo", help="watch the operator follow shifting traffic, no cluster needed",
        description="Runs on this machine: a traffic player (chat traffic that turns into long documents), a real "
                    "Prometheus scraping it when the prometheus binary is installed, an emulated Kubernetes API and "
                    "the real operator with an LLMService applied (Llama-3-8B on L4, A10G and H100, estimated "
                    "profiles). Shows the rate and mix, the allocation, $/h against the best single GPU type, the "
                    "make-before-break steps and the Events; stops after --duration or Ctrl-C and leaves the final "
                    "objects as YAML. Needs the demo extra: pip install -e '.[demo]'.")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds to run (default 180)")
    parser.add_argument("--rate", type=float, default=4.0, help="request rate of the traffic, req/s (default 4)")
    parser.add_argument("--mix", choices=MIXES, default="chat", help="size mix at the start (default chat)")
    parser.add_argument("--then", choices=MIXES, default="documents", help="size mix after the switch "
                                                                           "(default documents)")
    parser.add_argument("--switch-after", type=float, default=60.0, help="seconds before the switch (default 60)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of traffic each solve looks at "
                                                                   "(default 30)")
    parser.add_argument("--output-dir", type=Path, help="folder for the final objects as YAML (default: a new "
                                                        "temporary folder, named at the end)")
    parser.add_argument("--no-prometheus", action="store_true", help="read the player's counters directly even "
                                                                     "when a prometheus binary is installed")
    parser.add_argument("--plain", action="store_true", help="print one line per change instead of the live view "
                                                             "(default: live view on a terminal)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the flags, then run the scenario."""
    number(args.duration, "--duration", minimum=5)
    number(args.rate, "--rate", minimum=0, strict_minimum=True)
    number(args.switch_after, "--switch-after", minimum=0)
    number(args.window, "--window", minimum=5)
    if args.output_dir is not None and args.output_dir.exists() and not args.output_dir.is_dir():
        raise InputError("--output-dir", f"{args.output_dir} is not a folder", "a folder (created when missing)")
    missing = [name for name in ("kmock", "rich") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError("melange demo", f"{' and '.join(missing)} not installed", "pip install -e '.[demo]'")
    from melange.demo.scenario import DemoOptions, run_demo
    options = DemoOptions(duration_s=args.duration, rate=args.rate, mix=args.mix, then=args.then,
                          switch_after_s=args.switch_after, window_s=args.window, output_dir=args.output_dir,
                          use_prometheus=not args.no_prometheus, live_view=not args.plain and sys.stdout.isatty())
    result = run_demo(options)
    print(result.summary())
    return 0
