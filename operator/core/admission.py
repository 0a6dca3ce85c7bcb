"""An LLMService checked as the Kubernetes API server checks it at admission, off the cluster.

In the server's order: strict decoding (a field the CRD's schema does not declare), the schema's
defaults, `metadata.name` (ObjectMeta's DNS-1123 rule), the OpenAPI v3 schema (types, bounds, enums,
patterns, required fields, sizes; jsonschema in draft 4, whose boolean `exclusiveMinimum` is
OpenAPI 3.0's) and the `x-kubernetes-validations` CEL rules (cel-python). Each error is one line in
the API server's own words (kube-apiserver v1.36: `<field>: <type>: <value>: <detail>`), so that
`melange plan` says what `kubectl apply` would; tests/cluster/test_plan.py compares the two on a
real API server.

Pure: the CRD comes in as data; nothing here reads a file or calls the API.
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

# k8s.io/apimachinery's IsDNS1123Subdomain: what every object's metadata.name must be.
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")


def crd_schema(crd: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """The OpenAPI v3 schema of one version of a CustomResourceDefinition (default: the storage version)."""
    versions = crd["spec"]["versions"]
    chosen = next((v for v in versions if v["name"] == version), None) if version else \
        next((v for v in versions if v.get("storage")), versions[0])
    if chosen is None:
        raise KeyError(version)
    return chosen["schema"]["openAPIV3Schema"]


def field_path(parts: Sequence[str | int]) -> str:
    """A field path as the API server writes it: `spec.gpuOptions[0].name`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def go_value(value: Any) -> str:
    """A JSON value as the API server prints it after `Invalid value:` (Go's %v, strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return "null"
    return json.dumps(json_type(value))


def json_type(value: Any) -> str:
    """The OpenAPI type name of a JSON value, as the server names the type it got."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def _number(bound: Any) -> str:
    return str(int(bound)) if isinstance(bound, float) and bound.is_integer() else str(bound)


def unknown_fields(obj: Any, schema: Mapping[str, Any], parts: tuple[str | int, ...] = ()) -> list[str]:
    """Fields the schema does not declare, which a strict decode refuses (kubectl's default
    `--validate=strict`). `metadata` is ObjectMeta, checked by the server's own type."""
    found: list[str] = []
    if isinstance(obj, Mapping) and isinstance(schema, Mapping):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return found
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            here = (*parts, key)
            if parts == () and key == "metadata":
                continue
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], here)
            elif isinstance(extra, Mapping):
                found += unknown_fields(value, extra, here)
            elif properties is not None or extra is False:
                found.append(field_path(here))
    elif isinstance(obj, list) and isinstance(schema, Mapping) and isinstance(schema.get("items"), Mapping):
        for k, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], (*parts, k))
    return found


def with_defaults(obj: Any, schema: Mapping[str, Any]) -> Any:
    """A copy of `obj` with the schema's `default`s filled in where a field is absent (the server's
    structural defaulting, done before validation and before any controller sees the object)."""
    obj = copy.deepcopy(obj)

    def fill(value: Any, node: Mapping[str, Any]) -> None:
        if isinstance(value, dict):
            for key, sub in (node.get("properties") or {}).items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    fill(value[key], sub)
            extra = node.get("additionalProperties")
            if isinstance(extra, Mapping):
                for key in set(value) - set(node.get("properties") or {}):
                    fill(value[key], extra)
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            for item in value:
                fill(item, node["items"])

    fill(obj, schema)
    return obj


def _metadata_errors(obj: Mapping[str, Any]) -> list[str]:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if name is None or name == "":
        return ["metadata.name: Required value: name or generateName is required"]
    if isinstance(name, str) and (len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)):
        return [f"metadata.name: Invalid value: {go_value(name)}: {DNS1123_SUBDOMAIN_MESSAGE}"]
    return []


def _schema_error(error: Any) -> str:
    """One jsonschema error in the API server's words."""
    parts = tuple(error.absolute_path)
    path = field_path(parts)
    keyword, bound, value = error.validator, error.validator_value, error.instance
    body = f"{path} in body"
    if keyword == "required":
        missing = re.match(r"'(.*)' is a required property", error.message)
        return f"{field_path((*parts, missing.group(1) if missing else '?'))}: Required value"
    if keyword == "type":
        got = json.dumps(json_type(value))
        return f"{path}: Invalid value: {got}: {body} must be of type {bound}: {got}"
    if keyword == "enum":
        allowed = ", ".join(go_value(v) for v in bound)
        return f"{path}: Unsupported value: {go_value(value)}: supported values: {allowed}"
    if keyword in ("minimum", "maximum"):
        exclusive = error.schema.get(f"exclusive{keyword.capitalize()}") is True
        relation = ("greater than" if keyword == "minimum" else "less than") + ("" if exclusive else " or equal to")
        return f"{path}: Invalid value: {go_value(value)}: {body} should be {relation} {_number(bound)}"
    if keyword == "pattern":
        return f"{path}: Invalid value: {go_value(value)}: {body} should match '{bound}'"
    if keyword == "minItems":
        return f"{path}: Invalid value: {len(value)}: {body} should have at least {bound} items"
    if keyword == "maxItems":
        return f"{path}: Too many: {len(value)}: must have at most {bound} items"
    if keyword == "minLength":
        return f"{path}: Invalid value: {go_value(value)}: {body} should be at least {bound} chars long"
    if keyword == "maxLength":
        return f"{path}: Too long: may not be more than {bound} bytes"
    return f"{path}: Invalid value: {go_value(value)}: {error.message}"


def schema_errors(obj: Any, schema: Mapping[str, Any]) -> list[str]:
    """The OpenAPI v3 schema's errors (types, bounds, enums, patterns, required, sizes)."""
    import jsonschema  # draft 4: OpenAPI 3.0's boolean exclusiveMinimum/exclusiveMaximum

    validator = jsonschema.Draft4Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [_schema_error(error) for error in errors]


def cel_errors(obj: Any, schema: Mapping[str, Any]) -> list[str]:
    """The `x-kubernetes-validations` rules that `obj` breaks, walking the schema and the object together."""
    import celpy

    env = celpy.Environment()
    errors: list[str] = []

    def walk(node: Mapping[str, Any], value: Any, parts: tuple[str | int, ...]) -> None:
        for rule in node.get("x-kubernetes-validations", []):
            result = env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
            if isinstance(result, celpy.CELEvalError) or not bool(result):
                message = rule.get("message") or f"failed rule: {rule['rule']}"
                errors.append(f"{field_path(parts) or '<nil>'}: Invalid value: {message}")
        if isinstance(value, Mapping):
            for key, sub in (node.get("properties") or {}).items():
                if key in value:
                    walk(sub, value[key], (*parts, key))
            extra = node.get("additionalProperties")
            if isinstance(extra, Mapping):
                for key in set(value) - set(node.get("properties") or {}):
                    walk(extra, value[key], (*parts, key))
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            for k, item in enumerate(value):
                walk(node["items"], item, (*parts, k))

    walk(schema, obj, ())
    return errors


def admission_errors(obj: Any, crd: Mapping[str, Any]) -> tuple[list[str], Any]:
    """Every way `obj` fails the CRD at admission, in the API server's words and order, and the object
    as the server would store it (defaults filled in). [] errors: the server would accept it."""
    schema = crd_schema(crd)
    if not isinstance(obj, Mapping):
        return [f"Object 'Kind' is missing in {json.dumps(obj)[:80]}"], obj
    unknown = unknown_fields(obj, schema)
    if unknown:
        return ["strict decoding error: " + ", ".join(f'unknown field "{path}"' for path in unknown)], obj
    defaulted = with_defaults(obj, schema)
    errors = _metadata_errors(defaulted) + schema_errors(defaulted, schema)
    if not errors:
        errors = cel_errors(defaulted, schema)
    return errors, defaulted
