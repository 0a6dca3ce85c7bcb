"""The README's example output is what the command prints today (all but the solve's wall time)."""
from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT

COMMAND = "melange solve examples/arena-llama2-7b/bundle.yaml"
SWEEP_COMMAND = "melange sweep examples/arena-llama2-7b/bundle.yaml --rates 1,2,4,8,16,32"
WALL_TIME = re.compile(r", \d+\.\d ms\)")


def readme_example(command: str = COMMAND) -> str:
    """The code block after the README's "Example output (`command`" line."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(f"Example output (`{command}`"):]
    return after.split("```\n", 2)[1]


def test_readme_example_output_matches_the_command():
    printed = subprocess.run([sys.executable, "-m", "melange.solver.cli", *COMMAND.split()[1:]], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert WALL_TIME.sub(", X ms)", readme_example()) == WALL_TIME.sub(", X ms)", printed)


def test_readme_sweep_output_matches_the_command():
    printed = subprocess.run([sys.executable, "-m", "melange.solver.cli", *SWEEP_COMMAND.split()[1:]], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert readme_example(SWEEP_COMMAND) == printed
