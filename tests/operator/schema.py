"""Check LLMService objects as a Kubernetes API server would, with the product's own check
(`melange.operator.core.admission`, which `melange plan` uses): strict fields, the CRD's defaults, its
OpenAPI v3 schema and its `x-kubernetes-validations` CEL rules, in the API server's words."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from melange.operator.core.admission import admission_errors, crd_schema

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "llmservice.yaml"


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def open_api_schema() -> dict[str, Any]:
    return crd_schema(crd())


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every way `obj` (an LLMService) breaks the CRD's schema or CEL rules; [] when it is valid."""
    return admission_errors(obj, crd())[0]
