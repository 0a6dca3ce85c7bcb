"""The README stays short and true: its example output is what the command prints today (all but the
solve's wall time), the same for every example in docs/, its commands run on a fresh clone, and every
link in the README and docs/ reaches a file and a heading."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

COMMAND = "melange solve examples/arena-llama2-7b/bundle.yaml"
SWEEP_COMMAND = "melange sweep examples/arena-llama2-7b/bundle.yaml --rates 1,2,4,8,16,32"
WALL_TIME = re.compile(r", \d+\.\d ms\)")
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 200


def readme_example(command: str = COMMAND, path: Path = README) -> str:
    """The code block after the "Example output (`command`" line of a Markdown file."""
    text = path.read_text()
    after = text[text.index(f"Example output (`{command}`"):]
    return after.split("```\n", 2)[1]


def examples() -> list[tuple[str, str]]:
    """Every (file, command) with an "Example output (`command`" block, in the README and docs/."""
    return [(str(path.relative_to(ROOT)), command) for path in [README, *DOCS]
            for command in re.findall(r"Example output \(`(melange [^`]+)`", path.read_text())]


def printed(command: str) -> str:
    return subprocess.run([sys.executable, "-m", "melange.solver.cli", *shlex.split(command)[1:]], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_the_solve_and_sweep_examples_are_where_readers_look():
    assert ("README.md", COMMAND) in examples()
    assert ("docs/cli.md", COMMAND) in examples()
    assert ("docs/cli.md", SWEEP_COMMAND) in examples()


@pytest.mark.parametrize("where,command", examples())
def test_example_output_matches_the_command(where, command):
    assert WALL_TIME.sub(", X ms)", readme_example(command, ROOT / where)) == WALL_TIME.sub(", X ms)", printed(command))


# ---------------------------------------------------------------------------------------------
# What the README holds

def test_the_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (f"README.md has {lines} lines: keep it to what the project is, the two "
                                       f"commands, the three ways to use it and links; references go to docs/")


def test_the_readme_has_the_two_commands_and_the_three_ways():
    text = README.read_text()
    assert ".venv/bin/melange demo" in text
    assert "\n./run-tests.sh\n" in text and "`.ci/run`" in text
    headings = re.findall(r"^### (.+)$", text, flags=re.M)
    assert any("command line" in h for h in headings), headings
    assert any("operator, from a checkout" in h for h in headings), headings
    assert any("Helm" in h for h in headings), headings
    assert "helm install melange charts/melange-operator" in text and "image.repository=" in text


def test_every_docs_page_is_linked_from_the_readme():
    """A page nobody links to is not found: each file in docs/ appears in the README's Documentation list."""
    section = README.read_text().split("\n## Documentation\n")[1]
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)\)", section))
    assert linked == {path.name for path in DOCS}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(text: str, program: str) -> list[list[str]]:
    """The command lines of a program in the bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and Path(words[0]).name == program:
                out.append(words)
    return out


def test_the_readme_solve_and_sweep_commands_run_on_a_clone(tmp_path):
    lines = commands(README.read_text(), "melange")
    runs = [words for words in lines if words[1] in ("solve", "sweep")]
    assert len(runs) >= 3, lines
    for words in runs:
        args = [str(tmp_path / "plot.png") if arg.endswith(".png") else arg for arg in words[1:]]
        result = subprocess.run([sys.executable, "-m", "melange.solver.cli", *args], cwd=ROOT, capture_output=True,
                                text=True)
        assert result.returncode == 0, f"{shlex.join(words)}: {result.stderr}"


def test_the_readme_operator_and_helm_commands_name_real_files_flags_and_values():
    from melange.operator.main import build_parser

    text = README.read_text()
    for words in commands(text, "kubectl"):
        for flag, value in zip(words, words[1:]):
            if flag == "-f":
                assert (ROOT / value).is_file(), value
    (operator,) = commands(text, "melange-operator")
    build_parser().parse_args(operator[1:])  # exits (SystemExit) on an unknown flag
    values = yaml.safe_load((ROOT / "charts/melange-operator/values.yaml").read_text())
    installs = commands(text, "helm")
    assert installs
    for words in installs:
        assert words[1] == "install" and (ROOT / words[3]).is_dir(), words
        for flag, setting in zip(words, words[1:]):
            if flag == "--set":
                node = values
                for part in setting.split("=")[0].split("."):
                    assert isinstance(node, dict) and part in node, f"--set {setting}: no such value"
                    node = node[part]


# ---------------------------------------------------------------------------------------------
# Links

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"``.*?``|`[^`\n]*`", "", text)  # code spans (a regex pattern is no link)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_reaches_a_file_and_a_heading(path):
    broken = []
    for link in links(path):
        if re.match(r"[a-z]+:", link):  # http(s), mailto: not checked offline
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{link}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert broken == []


def test_the_link_check_sees_a_missing_heading(tmp_path):
    """The checker itself can fail."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Solve a workload (`melange solve`)\n\n[ok](#solve-a-workload-melange-solve) "
                    "[gone](#traces)\n")
    assert anchors(page) == {"title", "solve-a-workload-melange-solve"}
    assert [link.partition("#")[2] not in anchors(page) for link in links(page)] == [False, True]


CONTENTS_EXEMPT = {"cli-reference.md", "helm-values.md", "solver.md"}  # generated, or one section


@pytest.mark.parametrize("path", [p for p in DOCS if p.name not in CONTENTS_EXEMPT], ids=lambda p: p.name)
def test_every_section_of_a_page_is_in_its_contents_list(path):
    """Each page opens with a list of its sections, so a new section (a subcommand, a figure) is listed."""
    text = path.read_text()
    text = re.sub(r"<!-- BEGIN GENERATED.*?END GENERATED[^>]*-->", "", text, flags=re.S)
    sections = {slug(h) for h in re.findall(r"^##{1,2} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S),
                                             flags=re.M)}
    contents = re.search(r"^((?:\s*- \[.*\n)+)", text, flags=re.M).group(1)
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    assert sections - listed == set(), f"{path.name}: add these sections to the list at its top"
