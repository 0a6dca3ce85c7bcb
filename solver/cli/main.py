"""`melange`: the command line's parser and dispatch. `melange solve` needs no cluster.

Each subcommand's module registers its flags here and imports what it runs only when it runs,
so that `melange solve` on a bundle does not load the profiler or the Prometheus client.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from melange.solver.cli import profile_command, solve_command, sweep_command
from melange.solver.command_line import OneLineParser, VersionAction, run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    """The `melange` argument parser; each subcommand sets `handler`."""
    parser = OneLineParser(prog="melange", description="Cheapest mix of GPU types for LLM serving: solve the "
                                                       "Mélange ILP, or build the GPU profiles it needs.")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    solve_command.add_parser(commands)
    sweep_command.add_parser(commands)
    profile_command.add_parser(commands)
    for entry in entry_points(group="melange.commands"):  # e.g. `melange demo`, from outside the solver
        entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `melange` console script: 0 done, 2 bad input, 3 a server unavailable."""
    args = build_parser().parse_args(argv)
    return run_reporting_errors("melange", lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
