"""Run the `melange` command in-process, as the CLI tests do."""
from __future__ import annotations

from melange.solver.cli.main import main


def run(capsys, *argv):
    """Exit code, stdout and stderr of `melange ARGV` (arguments may be paths)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
