"""Write the generated parts of docs/ from their sources, or check that they match.

    python docs/generate.py           # rewrite every generated region
    python docs/generate.py --check   # exit 1 and name the regions that differ from their sources

A generated region sits between two markers in a hand-written Markdown file:

    <!-- BEGIN GENERATED: NAME (python docs/generate.py) -->
    ...
    <!-- END GENERATED: NAME -->

| region | file | source |
|---|---|---|
| `llmservice-fields` | docs/llmservice.md | the CRD's openAPIV3Schema (crds/llmservice.yaml): each field's type, default, limits and `description`, and its CEL rules |
| `helm-values` | docs/helm-values.md | the chart's values.yaml (keys, defaults) and values.schema.json (types, limits, `description`s) |
| `cli-reference` | docs/cli-reference.md | the `--help` of every `melange` subcommand (plugins included), `melange-operator` and `melange-router`, from their argparse parsers |

To change a reference, change its source (a CRD description, a value's description or default, a
flag's help) and run this script; tests/test_docs.py fails while they differ. A new `melange`
subcommand, a new CRD field or a new chart value appears here without touching this script.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CRD = ROOT / "crds" / "llmservice.yaml"
CHART = ROOT / "charts" / "melange-operator"
HELP_COLUMNS = 100  # argparse wraps --help to the terminal: fixed here so the output is the same everywhere
COMMAND = "python docs/generate.py"


# ---------------------------------------------------------------------------------------------
# Markdown helpers

def cell(text: str) -> str:
    """Text for one Markdown table cell: one line, pipes escaped (also inside code spans, as GFM wants)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    # outside code spans, a <placeholder> would read as an HTML tag
    return "`".join(part.replace("<", "&lt;") if i % 2 == 0 else part for i, part in enumerate(parts))


def code(value: object) -> str:
    """A value as inline code: strings as they are (`""` when empty), the rest as compact JSON."""
    text = value if isinstance(value, str) and value else json.dumps(value, separators=(",", ":"),
                                                                      ensure_ascii=False)
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# LLMService fields, from the CRD

def _schema_type(node: dict) -> str:
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return "object (free-form)"
    kind = node.get("type", "any")
    if kind == "array":
        return f"array of {_schema_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node and "properties" not in node:
        return f"map of {_schema_type(node['additionalProperties'])}"
    return kind


def _limits(node: dict) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(code(v) for v in node["enum"]))
    if "minimum" in node or "maximum" in node:
        low = node.get("minimum")
        high = node.get("maximum")
        if low is not None:
            parts.append(("> " if node.get("exclusiveMinimum") else ">= ") + f"{low:g}")
        if high is not None:
            parts.append(("< " if node.get("exclusiveMaximum") else "<= ") + f"{high:g}")
    for key, words in (("minLength", "length >= {}"), ("maxLength", "length <= {}"), ("minItems", "items >= {}"),
                       ("maxItems", "items <= {}"), ("maxProperties", "at most {} key(s)")):
        if key in node:
            parts.append(words.format(node[key]))
    if "pattern" in node:
        parts.append(f"pattern {code(node['pattern'])}")
    items = node.get("items", {})
    if node.get("type") == "array" and isinstance(items, dict) and items.get("type") not in ("object", "array"):
        inner = _limits(items)
        if inner:
            parts.append(f"each: {inner}")
    return "; ".join(parts)


def _crd_walk(node: dict, path: str, required: bool, rows: list, rules: list) -> None:
    if path:
        rows.append([f"`{path}`", _schema_type(node), code(node["default"]) if "default" in node else "",
                     "yes" if required else "", _limits(node), node.get("description", "")])
    for rule in node.get("x-kubernetes-validations", []):
        rules.append([f"`{path or '(root)'}`", code(rule["rule"]), rule.get("message", "")])
    for name, child in node.get("properties", {}).items():
        _crd_walk(child, f"{path}.{name}" if path else name, name in node.get("required", []), rows, rules)
    items = node.get("items")
    if isinstance(items, dict) and ("properties" in items or "x-kubernetes-validations" in items):
        _crd_walk_items(items, f"{path}[]", rows, rules)


def _crd_walk_items(items: dict, path: str, rows: list, rules: list) -> None:
    for rule in items.get("x-kubernetes-validations", []):
        rules.append([f"`{path}`", code(rule["rule"]), rule.get("message", "")])
    for name, child in items.get("properties", {}).items():
        _crd_walk(child, f"{path}.{name}", name in items.get("required", []), rows, rules)


def llmservice_fields() -> str:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    rows: list[list[str]] = []
    rules: list[list[str]] = []
    name = schema["properties"]["metadata"]["properties"]["name"]
    rows.append(["`metadata.name`", "string", "", "yes", _limits(name),
                 "The service's name; its objects are named `<name>-<option>`."])
    for top in ("spec", "status"):
        _crd_walk(schema["properties"][top], top, top in schema.get("required", []), rows, rules)
    names = crd["spec"]["names"]
    columns = [[f"`{c['name']}`", c["type"], f"`{c['jsonPath']}`"] for c in version.get("additionalPrinterColumns", [])]
    return "\n\n".join([
        f"`{names['kind']}` (`{crd['spec']['group']}/{version['name']}`, {crd['spec']['scope'].lower()}, short name "
        + ", ".join(f"`{s}`" for s in names.get("shortNames", [])) + f"), from `crds/{CRD.name}`.",
        "### Fields",
        "`[]` marks the entries of a list. Required: the field must be set when its parent is.",
        table(["field", "type", "default", "required", "allowed", "description"], rows),
        "### Rules across fields (CEL, checked at admission)",
        table(["on", "rule", "message when broken"], rules),
        "### `kubectl get llms` columns",
        table(["column", "type", "from"], columns),
    ])


# ---------------------------------------------------------------------------------------------
# Helm values, from values.yaml and values.schema.json

def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """values.yaml's keys as dotted paths; maps that are empty, and resources' requests/limits, are leaves."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("requests", "limits"):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resolve(node: dict, schema: dict) -> dict:
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _value_type(node: dict, schema: dict) -> str:
    node = _resolve(node, schema)
    if "const" in node:
        return code(node["const"])
    if "anyOf" in node:
        return " or ".join(_value_type(choice, schema) for choice in node["anyOf"])
    if "enum" in node:
        return "one of " + ", ".join(code(v) for v in node["enum"])
    kind = node.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array":
        kind = f"array of {_value_type(node.get('items', {}), schema)}"
    elif kind == "object" and isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
        kind = f"map of {_value_type(node['additionalProperties'], schema)}"
    elif kind == "object" and "properties" in node:
        kind = "object (" + ", ".join(node["properties"]) + ")"
    extra = []
    if "minimum" in node:
        extra.append(f">= {node['minimum']}")
    if "maximum" in node:
        extra.append(f"<= {node['maximum']}")
    if "pattern" in node and kind == "string":
        extra.append(f"pattern {code(node['pattern'])}")
    return kind + (" (" + ", ".join(extra) + ")" if extra else "")


def helm_values() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = _leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    rows = []
    for key, default in defaults.items():
        node = schema
        for part in key.split("."):
            node = _resolve(node, schema)["properties"][part]
        description = node.get("description") or _resolve(node, schema).get("description", "")
        rows.append([f"`{key}`", code(default), _value_type(node, schema), description])
    rules = [[rule.get("description", ""), code(json.dumps(rule.get("if"), separators=(",", ":"))),
              code(json.dumps(rule.get("then"), separators=(",", ":")))] for rule in schema.get("allOf", [])]
    parts = [f"From `charts/{CHART.name}/values.yaml` (defaults) and "
             f"`charts/{CHART.name}/values.schema.json` (types, limits, descriptions). "
             "`helm install` refuses values the schema does not allow, including keys it does not name.",
             table(["value", "default", "type", "description"], rows)]
    if rules:
        parts += ["Rules across values:", table(["rule", "if", "then"], rules)]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Command-line reference, from the argparse parsers

def _subcommands(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for sub_name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out += _subcommands(sub, f"{name} {sub_name}")
    return out


def cli_reference() -> str:
    from melange.operator.main import build_parser as operator_parser
    from melange.operator.router.proxy import build_parser as router_parser
    from melange.solver.cli.main import build_parser as melange_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        commands = (_subcommands(melange_parser(plugins=True), "melange")
                    + [("melange-operator", operator_parser()), ("melange-router", router_parser())])
        sections = [f"Generated with Python {sys.version_info.major}.{sys.version_info.minor} "
                    "(argparse's layout differs a little between versions)."]
        for name, parser in commands:
            sections.append(f"## `{name}`\n\n```text\n{parser.format_help().rstrip()}\n```")
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n\n".join(sections)


# ---------------------------------------------------------------------------------------------
# Regions

REGIONS: dict[str, tuple[Path, Callable[[], str]]] = {
    "llmservice-fields": (DOCS / "llmservice.md", llmservice_fields),
    "helm-values": (DOCS / "helm-values.md", helm_values),
    "cli-reference": (DOCS / "cli-reference.md", cli_reference),
}


def begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} ({COMMAND}) -->"


def end(name: str) -> str:
    return f"<!-- END GENERATED: {name} -->"


def region(text: str, name: str) -> str:
    """The text between a region's markers (without the blank lines around it)."""
    match = re.search(re.escape(begin(name)) + r"\n(.*?)\n?" + re.escape(end(name)), text, flags=re.S)
    if match is None:
        raise LookupError(f"no markers {begin(name)!r} ... {end(name)!r}")
    return match.group(1).strip("\n")


def replace_region(text: str, name: str, body: str) -> str:
    region(text, name)  # the markers must be there
    pattern = re.escape(begin(name)) + r".*?" + re.escape(end(name))
    return re.sub(pattern, lambda _: f"{begin(name)}\n\n{body}\n\n{end(name)}", text, count=1, flags=re.S)


def stale(names: list[str] | None = None) -> list[str]:
    """The regions whose file differs from what their source gives, each with its file."""
    out = []
    for name in names or REGIONS:
        path, render = REGIONS[name]
        try:
            current = region(path.read_text(), name)
        except (OSError, LookupError) as error:
            out.append(f"{name} ({path.relative_to(ROOT)}): {error}")
            continue
        if current != render().strip("\n"):
            out.append(f"{name} ({path.relative_to(ROOT)})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write (or --check) the generated parts of docs/.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for line in out_of_date:
            print(f"out of date: {line}; run {COMMAND}", file=sys.stderr)
        return 1 if out_of_date else 0
    for name, (path, render) in REGIONS.items():
        text = path.read_text()
        new = replace_region(text, name, render().strip("\n"))
        if new != text:
            path.write_text(new)
            print(f"wrote {name} in {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
