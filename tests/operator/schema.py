"""Check LLMService objects as a Kubernetes API server would: the CRD's OpenAPI v3 schema (types,
bounds, enums, patterns, required fields) with jsonschema, then its `x-kubernetes-validations` CEL
rules with cel-python, walking the schema and the object together."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "llmservice.yaml"


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def open_api_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _cel_errors(schema: dict[str, Any], value: Any, path: str, env: celpy.Environment) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            errors.append(f"{path}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}", env)
    if isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{k}]", env)
    return errors


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every way `obj` (an LLMService) breaks the CRD's schema or CEL rules; [] when it is valid."""
    schema = open_api_schema()
    validator = jsonschema.Draft4Validator(schema)  # OpenAPI 3.0 bounds: boolean exclusiveMinimum, as in draft 4
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    return errors or _cel_errors(schema, obj, "", celpy.Environment())
