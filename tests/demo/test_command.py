"""`melange demo` is found through the `melange.commands` entry point: listed by `--help`, its flags
checked before anything starts."""
from __future__ import annotations

import pytest

from melange.solver.cli.main import build_parser, main


def test_help_lists_the_demo(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out


def test_bad_demo_flags_are_one_line_and_exit_2(capsys):
    assert main(["demo", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--duration" in err and "must be >= 5" in err


def test_a_built_in_command_does_not_need_the_plugins():
    with pytest.raises(SystemExit):
        build_parser(plugins=False).parse_args(["demo"])
