"""The CRD and the examples: the examples apply as they are, bad specs are refused by the schema."""
from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from .schema import ROOT, crd, schema_errors

EXAMPLES = sorted((ROOT / "examples" / "operator").glob("*.yaml"))
K8S_VERSION = "1.33"


def example(name: str) -> dict:
    return yaml.safe_load((ROOT / "examples" / "operator" / name).read_text())


def test_the_crd_is_a_valid_custom_resource_definition():
    kubernetes_validate.validate(crd(), K8S_VERSION, strict=True)
    names = crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("LLMService", "llmservices", ["llms"])
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Mode", "$/h", "Savings %", "Ready", "Age"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_schema(path):
    assert len(EXAMPLES) >= 2
    assert schema_errors(yaml.safe_load(path.read_text())) == []


def _break(obj: dict, path: str, value) -> dict:
    """A copy of `obj` with the dotted `path` set to `value` (None deletes the key)."""
    broken = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = broken
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is None:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return broken


BAD = [
    ("spec.model", None, "model"),
    ("spec.slo", {}, "tpotMs and/or ttftMs"),
    ("spec.slo.tpotMs", 0, "tpotMs"),
    ("spec.slo.tpotMs", "fast", "tpotMs"),
    ("spec.gpuOptions", [], "gpuOptions"),
    ("spec.gpuOptions.0.name", "L4_big", "name"),
    ("spec.gpuOptions.0.gpusPerReplica", 0, "gpusPerReplica"),
    ("spec.gpuOptions.0.pricePerHour", 0, "pricePerHour"),
    ("spec.gpuOptions.1.name", "l4", "unique"),
    ("spec.gpuOptions.0.minReplicas", 5, "minReplicas must not exceed maxReplicas"),  # with maxReplicas 2 below
    ("spec.catalogModel", None, "catalogModel"),
    ("spec.mode", "yolo", "mode"),
    ("spec.workload.source", "guess", "source"),
    ("spec.workload.static.rate", -1, "rate"),
    ("spec.workload.static.traceConfigMapRef", {"name": "t", "key": "trace.csv"}, "exactly one of distribution"),
    ("spec.reallocation.targetUtilisation", 1.5, "targetUtilisation"),
    ("spec.reallocation.interval", "soon", "interval"),
    ("spec.nodePools", {"provider": "karpenter"}, "nodeClassRef"),
    ("spec.serving.port", 70000, "port"),
    ("metadata.name", "Llama3", "name"),
    ("spec.gpuOptions.0.pricing", "hourly", "pricing"),
    ("spec.gpuOptions.0.nodePricePerHour", 40.0, "nodePricePerHour needs gpusPerNode"),
    ("spec.gpuOptions.0.gpusPerNode", 0, "gpusPerNode"),
    ("spec.nodePools", {"provider": "none", "disruption": {"expireAfter": "30d"}}, "expireAfter"),
    ("spec.nodePools", {"provider": "none", "disruption": {"budgets": [{"nodes": "1", "schedule": "@daily"}]}}, "schedule and duration"),
    ("spec.nodePools", {"provider": "none", "disruption": {"budgets": [{"nodes": "1", "reasons": ["Expired"]}]}}, "reasons"),
    ("spec.nodePools", {"provider": "none", "disruption": {"budgets": [{"nodes": 1}]}}, "nodes"),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_the_schema_refuses_bad_specs(path, value, expected):
    good = example("llama-3-8b.yaml")
    good["spec"]["gpuOptions"][0]["maxReplicas"] = 2
    assert schema_errors(good) == []
    errors = schema_errors(_break(good, path, value))
    assert errors and any(expected in e for e in errors), errors


def test_every_option_with_a_profile_needs_no_catalog_model():
    arena = example("arena-llama2-7b.yaml")
    assert "catalogModel" not in arena["spec"]
    assert schema_errors(arena) == []
    del arena["spec"]["gpuOptions"][2]["profile"]
    assert any("catalogModel" in e for e in schema_errors(arena))


def test_node_pricing_and_disruption_pass_the_schema():
    good = example("llama-3-8b.yaml")
    good["spec"]["gpuOptions"][2].update({"pricing": "node", "gpusPerNode": 8, "nodePricePerHour": 40.966})
    good["spec"]["nodePools"] = {"provider": "karpenter", "nodeClassRef": {"group": "g", "kind": "k", "name": "n"},
                                 "disruption": {"expireAfter": "720h", "consolidateAfter": "10m", "budgets": [
                                     {"nodes": "0", "schedule": "0 9 * * mon-fri", "duration": "8h"},
                                     {"nodes": "20%", "reasons": ["Empty", "Drifted"]}]}}
    assert schema_errors(good) == []
    good["spec"]["gpuOptions"][2].update({"gpusPerReplica": 4, "gpusPerNode": 2})
    assert any("gpusPerNode must hold at least one replica" in e for e in schema_errors(good))


def test_the_schema_and_the_reader_know_the_same_option_and_node_pool_fields():
    """The spec is stated twice (this schema and operator/core/spec.py): the option fields and the
    nodePools fields must be the same in both."""
    from melange.operator.core import spec as reader
    from .schema import open_api_schema
    spec = open_api_schema()["properties"]["spec"]["properties"]
    assert set(spec["gpuOptions"]["items"]["properties"]) == set(reader._OPTION_FIELDS)
    node_pools = spec["nodePools"]["properties"]
    assert set(node_pools) == {"provider", "nodeClassRef", "disruption"}
    disruption = node_pools["disruption"]["properties"]
    assert set(disruption) == {"expireAfter", "consolidateAfter", "budgets"}
    assert set(disruption["budgets"]["items"]["properties"]) == {"nodes", "reasons", "schedule", "duration"}
    defaults = reader.NodePoolDisruption()
    assert (disruption["expireAfter"]["default"], disruption["consolidateAfter"]["default"]) == (
        defaults.expire_after, defaults.consolidate_after)
    assert reader.KARPENTER_DURATION.pattern == disruption["expireAfter"]["pattern"]
    assert reader.KARPENTER_BUDGET_NODES.pattern == disruption["budgets"]["items"]["properties"]["nodes"]["pattern"]
