"""What every command-line entry point shares: a parser whose usage errors are one line, and one
way to turn a bad input or an unavailable server into one line on stderr and an exit status.

Used by `melange` and by the `python -m` entry points (router, traffic player, shipped profiles),
so that each answers bad input the same way: one line naming the flag or file, exit 2 (3 when a
server we depend on is unavailable), never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from melange.solver.errors import InputError, UnavailableError

EXIT_USER_ERROR = 2
EXIT_UNAVAILABLE = 3


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong) and exit status 2, and every
    default is stated in --help (options whose help does not already say "default")."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends to an option's help "(required)", or its default ("none" where it has none), unless
    the help already says its default; switches (no value) are left alone."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.nargs == 0 or "default" in text:
            return text
        if action.required:
            suffix = "(required)"
        elif action.default in (None, [], argparse.SUPPRESS):
            suffix = "(default: none)"
        else:
            suffix = "(default: %(default)s)"
        return f"{text} {suffix}" if text else suffix


def package_version() -> str:
    """The installed melange-operator version (from the package metadata)."""
    from importlib import metadata  # ~25 ms to import: only when the version is asked for
    try:
        return metadata.version("melange-operator")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class VersionAction(argparse.Action):
    """`--version`: prints `<prog> <package version>` and exits; the version is looked up only then."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the installed package version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def run_reporting_errors(program: str, action: Callable[[], int | None]) -> int:
    """Run `action`; a bad input becomes one line and status 2, an unavailable server one line and
    status 3, a closed stdout (e.g. `| head`) status 0."""
    try:
        return action() or 0
    except InputError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except UnavailableError as error:
        print(f"{program}: {error.what} unavailable: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BrokenPipeError:  # the reader went away; not an error of ours
        sys.stderr.close()
        return 0
