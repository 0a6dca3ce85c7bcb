"""`melange`: the command line's parser and dispatch. `melange solve` needs no cluster.

Each subcommand's module registers its flags here and imports what it runs only when it runs,
so that `melange solve` on a bundle does not load the profiler or the Prometheus client.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from melange.solver.cli import profile_command, solve_command
from melange.solver.errors import InputError, UnavailableError

EXIT_USER_ERROR = 2
EXIT_UNAVAILABLE = 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `melange` argument parser; each subcommand sets `handler`."""
    parser = _Parser(prog="melange", description="Cheapest mix of GPU types for LLM serving.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    solve_command.add_parser(commands)
    profile_command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `melange` console script: 0 done, 2 bad input, 3 a server unavailable."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InputError as error:
        print(f"melange: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except UnavailableError as error:
        print(f"melange: {error.what} unavailable: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BrokenPipeError:  # the reader (e.g. `head`) went away; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
