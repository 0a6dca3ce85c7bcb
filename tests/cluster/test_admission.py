"""The CRD on a real API server: helm installs it, the server accepts it (structural schema, CEL
rules within their cost budget), the examples apply, and bad specs are refused at admission with
the server's own message."""
from __future__ import annotations

import json

import pytest
import yaml

from ..operator.test_crd import BAD, _break, example
from .conftest import EXAMPLES_DIR, condition

pytestmark = pytest.mark.cluster


def test_helm_installs_the_crd_and_the_server_establishes_it(cluster, release):
    crd = cluster.get("crd", "llmservices.melange.ai")
    assert condition(crd, "Established") == "True"
    assert condition(crd, "NamesAccepted") == "True"
    assert condition(crd, "NonStructuralSchema") in (None, "False")
    assert crd["spec"]["names"]["shortNames"] == ["llms"]
    # helm's own record of the release
    resources = cluster.kubectl("api-resources", "--api-group=melange.ai", "-o", "name").stdout.split()
    assert resources == ["llmservices.melange.ai"]


@pytest.mark.parametrize("path", sorted(EXAMPLES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_pass_server_side_validation(cluster, release, path):
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), "-o", "json")
    applied = json.loads(result.stdout)
    assert applied["kind"] == "LLMService"
    assert applied["spec"]["model"] == yaml.safe_load(path.read_text())["spec"]["model"]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_the_api_server_refuses_bad_specs_at_admission(cluster, release, path, value, expected):
    good = example("llama-3-8b.yaml")
    good["spec"]["gpuOptions"][0]["maxReplicas"] = 2
    assert cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(good)).returncode == 0
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(_break(good, path, value)),
                             check=False)
    assert result.returncode != 0, f"the server accepted {path}={value!r}"
    message = result.stderr
    assert "is invalid" in message or "Invalid value" in message or "Required value" in message, message
    assert expected in message, message
