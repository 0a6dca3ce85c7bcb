"""`melange`: the command line's parser and dispatch. `melange solve` needs no cluster.

Each subcommand's module registers its flags here and imports what it runs only when it runs,
so that `melange solve` on a bundle does not load the profiler or the Prometheus client.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from melange.solver.cli import profile_command, solve_command, sweep_command
from melange.solver.command_line import OneLineParser, VersionAction, run_reporting_errors


BUILT_IN = ("solve", "sweep", "profile")


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The `melange` argument parser; each subcommand sets `handler`. `plugins` adds the subcommands
    other packages register under the `melange.commands` entry point (e.g. `melange demo`)."""
    parser = OneLineParser(prog="melange", description="Cheapest mix of GPU types for LLM serving: solve the "
                                                       "Mélange ILP, or build the GPU profiles it needs.")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    solve_command.add_parser(commands)
    sweep_command.add_parser(commands)
    profile_command.add_parser(commands)
    if plugins:
        from importlib.metadata import entry_points  # ~60 ms with the scan: not for a built-in command
        for entry in entry_points(group="melange.commands"):
            entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `melange` console script: 0 done, 2 bad input, 3 a server unavailable."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(plugins=not argv or argv[0] not in BUILT_IN).parse_args(argv)
    return run_reporting_errors("melange", lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
