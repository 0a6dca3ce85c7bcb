"""The generated references in docs/ match their sources (docs/generate.py): the LLMService fields from the
CRD, the chart values from values.schema.json and values.yaml, the --help of every command."""
from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import yaml

from .conftest import ROOT

FIX = "run `.venv/bin/python docs/generate.py` and commit docs/"


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_generator()


@pytest.mark.parametrize("name", ["llmservice-fields", "helm-values"])
def test_generated_reference_matches_its_source(name):
    path, render = generate.REGIONS[name]
    assert generate.region(path.read_text(), name) == render().strip("\n"), (
        f"{path.relative_to(ROOT)} ({name}) differs from its source: {FIX}")


def test_the_command_line_reference_matches_the_parsers():
    path, render = generate.REGIONS["cli-reference"]
    text = generate.region(path.read_text(), "cli-reference")
    made_with = re.search(r"Generated with Python (\d+)\.(\d+)", text)
    if tuple(map(int, made_with.groups())) != sys.version_info[:2]:
        pytest.skip(f"argparse lays out --help differently on Python {sys.version_info.major}."
                    f"{sys.version_info.minor} than on {made_with.group(1)}.{made_with.group(2)}, which wrote it")
    assert text == render().strip("\n"), f"{path.relative_to(ROOT)} differs from the parsers' --help: {FIX}"


def test_the_command_line_reference_has_every_command():
    text = (ROOT / "docs" / "cli-reference.md").read_text()
    for command in ("melange", "melange solve", "melange sweep", "melange profile estimate",
                    "melange profile measure", "melange demo", "melange-operator", "melange-router"):
        assert f"## `{command}`\n" in text, command


def test_the_check_command_agrees():
    assert generate.main(["--check"]) == 0, FIX


# ---------------------------------------------------------------------------------------------
# The sources carry the descriptions the references show

def crd_fields(node: dict, path: str = ""):
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}" if path else name, child
        yield from crd_fields(child, f"{path}.{name}" if path else name)
    items = node.get("items")
    if isinstance(items, dict):
        yield from crd_fields(items, f"{path}[]")


def test_every_llmservice_field_has_a_description():
    schema = yaml.safe_load(generate.CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [path for path, node in crd_fields(schema["properties"]["spec"], "spec") if not node.get("description")]
    assert missing == [], "add a description to these CRD fields (crds/llmservice.yaml)"


def test_every_chart_value_has_a_description():
    schema = json.loads((generate.CHART / "values.schema.json").read_text())
    table = generate.region((ROOT / "docs" / "helm-values.md").read_text(), "helm-values")
    rows = re.findall(r"^\| `([^`]+)` \|.*\| ([^|]*) \|$", table, flags=re.M)
    assert len(rows) == len(generate._leaves(yaml.safe_load((generate.CHART / "values.yaml").read_text())))
    assert [key for key, description in rows if not description.strip()] == [], (
        "add a description to these values in values.schema.json")
    assert schema["properties"]["image"]["properties"]["repository"]["description"]


# ---------------------------------------------------------------------------------------------
# The check can fail: a changed source makes the committed reference stale

def test_a_changed_crd_description_makes_the_fields_reference_stale(tmp_path, monkeypatch):
    copy = tmp_path / "llmservice.yaml"
    copy.write_text(generate.CRD.read_text())
    monkeypatch.setattr(generate, "CRD", copy)
    assert generate.stale(["llmservice-fields"]) == []
    copy.write_text(copy.read_text().replace("description: Time per output token, ms.",
                                             "description: Time per output token."))
    assert generate.stale(["llmservice-fields"]) == ["llmservice-fields (docs/llmservice.md)"]


def test_a_changed_value_default_makes_the_values_reference_stale(tmp_path, monkeypatch):
    chart = tmp_path / generate.CHART.name
    chart.mkdir()
    for name in ("values.yaml", "values.schema.json"):
        (chart / name).write_text((generate.CHART / name).read_text())
    monkeypatch.setattr(generate, "CHART", chart)
    assert generate.stale(["helm-values"]) == []
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("logLevel: info", "logLevel: debug"))
    assert generate.stale(["helm-values"]) == ["helm-values (docs/helm-values.md)"]


def test_a_region_without_markers_is_reported(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("# no markers\n")
    monkeypatch.setattr(generate, "REGIONS", {"helm-values": (page, generate.helm_values)})
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    assert generate.stale() == ["helm-values (page.md): no markers '<!-- BEGIN GENERATED: helm-values "
                                "(python docs/generate.py) -->' ... '<!-- END GENERATED: helm-values -->'"]
