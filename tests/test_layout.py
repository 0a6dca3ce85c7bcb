"""The layout's dependency direction: cli -> profiling/metrics -> core; operator -> solver; never back.

Every import statement counts, also those inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGES = {"solver": "melange.solver", "operator": "melange.operator", "testing": "melange.testing",
            "demo": "melange.demo"}


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The absolute module names a file imports (relative imports resolved against its package)."""
    package = PACKAGES[path.relative_to(ROOT).parts[0]]
    package_parts = package.split(".") + list(path.relative_to(ROOT).parts[1:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package_parts[:len(package_parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {name}" for path in paths for name in sorted(imported(path))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_the_solver_never_imports_the_operator_the_demo_or_test_helpers():
    assert offending(modules("solver"), ("melange.operator", "melange.testing", "melange.demo", "kopf",
                                         "kubernetes")) == []


def test_the_core_imports_no_profiling_metrics_or_cli():
    core = [p for p in modules("solver") if p.parent == ROOT / "solver"]
    assert len(core) > 10
    assert offending(core, ("melange.solver.profiling", "melange.solver.metrics", "melange.solver.cli")) == []


@pytest.mark.parametrize("folder", ["solver/profiling", "solver/metrics"])
def test_profiling_and_metrics_do_not_import_the_cli(folder):
    assert offending(modules(folder), ("melange.solver.cli",)) == []


def test_the_operator_does_not_import_test_helpers_or_the_demo():
    assert offending(modules("operator"), ("melange.testing", "melange.demo")) == []


def test_every_package_says_what_it_holds():
    for folder in PACKAGES:
        for init in (ROOT / folder).rglob("__init__.py"):
            docstring = ast.get_docstring(ast.parse(init.read_text()))
            assert docstring and len(docstring) > 40, f"{init.relative_to(ROOT)} has no docstring saying what it holds"


def test_the_check_sees_a_relative_import_inside_a_function():
    """The checker itself can fail: a core module importing the metrics package is caught."""
    probe = ROOT / "solver" / "_layout_probe.py"
    probe.write_text("def f():\n    from .metrics import histograms\n")
    try:
        assert offending([probe], ("melange.solver.metrics",)) == [
            "solver/_layout_probe.py imports melange.solver.metrics",
            "solver/_layout_probe.py imports melange.solver.metrics.histograms"]
    finally:
        probe.unlink()


def test_the_operators_core_makes_no_calls():
    """The pure core of a reconcile imports neither kopf, the Kubernetes client, HTTP clients nor the
    operator's shell (the modules one folder up)."""
    core = modules("operator/core")
    assert len(core) >= 8
    shell = [f"melange.operator.{p.stem}" for p in (ROOT / "operator").glob("*.py") if p.stem != "__init__"]
    assert offending(core, ("kopf", "kubernetes", "aiohttp", "requests", "prometheus_api_client",
                            "melange.operator.router", *shell)) == []
