"""Render and lint the Helm chart offline with helm-python-sdk (Helm's Go SDK behind ctypes: no
helm binary, no cluster, no network)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "melange-operator"
RELEASE, NAMESPACE = "melange", "melange-system"
NOTES = "melange-operator/templates/NOTES.txt"

helm.disable_logging()  # the SDK logs each followed symlink (the chart's CRD) at INFO


def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, as `helm template melange charts/melange-operator -n melange-system`."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object (NOTES.txt and empty templates left out)."""
    found = []
    for path, text in sorted(render(values).items()):
        if path == NOTES:
            continue
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def one(found: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [o for o in found if o["kind"] == kind]
    assert len(matches) == 1, f"{len(matches)} objects of kind {kind}"
    return matches[0]


def lint(values: dict[str, Any], kube_version: str) -> dict[str, Any]:
    """`helm lint --strict` with these values."""
    return helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=kube_version)
