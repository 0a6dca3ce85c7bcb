"""operator/core/admission.py: an LLMService checked as the API server checks it, in its words.

The expected messages were recorded from a real kube-apiserver v1.36.3 (`kubectl apply
--dry-run=server`, the first error of each refusal; tests/cluster/test_plan.py checks them against
the live server on every cluster run): an independent source, not this code's output.
"""
from __future__ import annotations

import copy

import pytest
import yaml

from melange.operator.core.admission import (admission_errors, crd_schema, field_path, go_value, unknown_fields,
                                             with_defaults)

from ..schema import crd
from ..test_crd import EXAMPLES, _break, example


def good_manifest() -> dict:
    """The Llama-3 example with a quota on its first option (so minReplicas can exceed it)."""
    manifest = example("llama-3-8b.yaml")
    manifest["spec"]["gpuOptions"][0]["maxReplicas"] = 2
    return manifest


# (dotted path in the good manifest, value set there (None: deleted), the API server's first error)
REFUSED = [
    ('spec.model', None,
     'spec.model: Required value'),
    ('spec.slo', {},
     'spec.slo: Invalid value: set tpotMs and/or ttftMs'),
    ('spec.slo.tpotMs', 0,
     'spec.slo.tpotMs: Invalid value: 0: spec.slo.tpotMs in body should be greater than 0'),
    ('spec.slo.tpotMs', 'fast',
     'spec.slo.tpotMs: Invalid value: "string": spec.slo.tpotMs in body must be of type number: "string"'),
    ('spec.gpuOptions', [],
     'spec.gpuOptions: Invalid value: 0: spec.gpuOptions in body should have at least 1 items'),
    ('spec.gpuOptions.0.name', 'L4_big',
     'spec.gpuOptions[0].name: Invalid value: "L4_big": spec.gpuOptions[0].name in body should match \'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$\''),
    ('spec.gpuOptions.0.gpusPerReplica', 0,
     'spec.gpuOptions[0].gpusPerReplica: Invalid value: 0: spec.gpuOptions[0].gpusPerReplica in body should be greater than or equal to 1'),
    ('spec.gpuOptions.0.pricePerHour', 0,
     'spec.gpuOptions[0].pricePerHour: Invalid value: 0: spec.gpuOptions[0].pricePerHour in body should be greater than 0'),
    ('spec.gpuOptions.1.name', 'l4',
     'spec.gpuOptions: Invalid value: gpuOptions names must be unique'),
    ('spec.gpuOptions.0.minReplicas', 5,
     'spec.gpuOptions[0]: Invalid value: minReplicas must not exceed maxReplicas'),
    ('spec.catalogModel', None,
     'spec: Invalid value: set catalogModel, or give every gpuOptions entry a profile (inline or configMapRef)'),
    ('spec.mode', 'yolo',
     'spec.mode: Unsupported value: "yolo": supported values: "apply", "recommend"'),
    ('spec.workload.source', 'guess',
     'spec.workload.source: Unsupported value: "guess": supported values: "static", "prometheus"'),
    ('spec.workload.static.rate', -1,
     'spec.workload.static.rate: Invalid value: -1: spec.workload.static.rate in body should be greater than or equal to 0'),
    ('spec.workload.static.traceConfigMapRef', {'name': 't', 'key': 'trace.csv'},
     'spec.workload.static: Invalid value: static takes exactly one of distribution or traceConfigMapRef'),
    ('spec.reallocation.targetUtilisation', 1.5,
     'spec.reallocation.targetUtilisation: Invalid value: 1.5: spec.reallocation.targetUtilisation in body should be less than or equal to 1'),
    ('spec.reallocation.interval', 'soon',
     'spec.reallocation.interval: Invalid value: "soon": spec.reallocation.interval in body should match \'^[0-9]+(\\.[0-9]+)?(s|m|h)$\''),
    ('spec.nodePools', {'provider': 'karpenter'},
     'spec.nodePools: Invalid value: provider karpenter needs nodeClassRef'),
    ('spec.serving.port', 70000,
     'spec.serving.port: Invalid value: 70000: spec.serving.port in body should be less than or equal to 65535'),
    ('metadata.name', 'Llama3',
     'metadata.name: Invalid value: "Llama3": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\', and must start and end with an alphanumeric character (e.g. \'example.com\', regex used for validation is \'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\')'),
    ('spec.gpuOptions.0.pricing', 'hourly',
     'spec.gpuOptions[0].pricing: Unsupported value: "hourly": supported values: "gpu", "node"'),
    ('spec.gpuOptions.0.nodePricePerHour', 40.0,
     'spec.gpuOptions[0]: Invalid value: nodePricePerHour needs gpusPerNode (the GPUs one node of that price carries)'),
    ('spec.gpuOptions.0.gpusPerNode', 0,
     'spec.gpuOptions[0].gpusPerNode: Invalid value: 0: spec.gpuOptions[0].gpusPerNode in body should be greater than or equal to 1'),
    ('spec.nodePools', {'provider': 'none', 'disruption': {'expireAfter': '30d'}},
     'spec.nodePools.disruption.expireAfter: Invalid value: "30d": spec.nodePools.disruption.expireAfter in body should match \'^(([0-9]+(s|m|h))+|Never)$\''),
    ('spec.nodePools', {'provider': 'none', 'disruption': {'budgets': [{'nodes': '1', 'schedule': '@daily'}]}},
     'spec.nodePools.disruption.budgets[0]: Invalid value: schedule and duration go together'),
    ('spec.nodePools', {'provider': 'none', 'disruption': {'budgets': [{'nodes': '1', 'reasons': ['Expired']}]}},
     'spec.nodePools.disruption.budgets[0].reasons[0]: Unsupported value: "Expired": supported values: "Underutilized", "Empty", "Drifted"'),
    ('spec.nodePools', {'provider': 'none', 'disruption': {'budgets': [{'nodes': 1}]}},
     'spec.nodePools.disruption.budgets[0].nodes: Invalid value: "integer": spec.nodePools.disruption.budgets[0].nodes in body must be of type string: "integer"'),
    ('spec.foo', 1,
     'strict decoding error: unknown field "spec.foo"'),
    ('spec.gpuOptions.0.gpu', None,
     'spec.gpuOptions[0].gpu: Required value'),
    ('spec.workload.static.distribution', [[0.5, 'x']],
     'spec.workload.static.distribution[0][1]: Invalid value: "string": spec.workload.static.distribution[0][1] in body must be of type number: "string"'),
    ('spec.gpuOptions.0.name', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
     'spec.gpuOptions[0].name: Too long: may not be more than 24 bytes'),
    ('spec.workload.prometheus', {'url': 'ftp://x'},
     'spec.workload.prometheus.url: Invalid value: "ftp://x": spec.workload.prometheus.url in body should match \'^https?://\''),
    ('spec.router', {'replicas': 0},
     'spec.router.replicas: Invalid value: 0: spec.router.replicas in body should be greater than or equal to 1'),
    ('spec.gpuOptions.0.bogus', 1,
     'strict decoding error: unknown field "spec.gpuOptions[0].bogus"'),
    ('spec.gpuOptions.0.nodeSelector', {'a': 1},
     'spec.gpuOptions[0].nodeSelector.a: Invalid value: "integer": spec.gpuOptions[0].nodeSelector.a in body must be of type string: "integer"'),
]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_are_admitted(path):
    errors, stored = admission_errors(yaml.safe_load(path.read_text()), crd())
    assert errors == []
    assert stored["spec"]["mode"] == "apply" and stored["spec"]["gpuOptions"][0]["gpusPerReplica"] == 1
    assert "router" not in stored["spec"]  # a default applies only inside an object that is there


@pytest.mark.parametrize("path,value,message", REFUSED, ids=[f"{p}={v!r}" for p, v, _ in REFUSED])
def test_a_bad_manifest_gets_the_api_servers_first_message(path, value, message):
    good = good_manifest()
    assert admission_errors(good, crd())[0] == []
    errors, _ = admission_errors(_break(good, path, value), crd())
    assert errors[0] == message


def test_defaults_are_filled_in_before_the_rules_run():
    """`source` defaults to static, so a workload without it and without `static` breaks the CEL rule
    `self.source != 'static' || has(self.static)`, as on the server."""
    manifest = good_manifest()
    manifest["spec"]["workload"] = {"grid": manifest["spec"]["workload"]["grid"]}
    errors, stored = admission_errors(manifest, crd())
    assert errors == ["spec.workload: Invalid value: source static needs workload.static"]
    assert stored["spec"]["workload"]["source"] == "static"


def test_defaults_reach_list_items_and_keep_what_is_set():
    schema = crd_schema(crd())
    manifest = good_manifest()
    stored = with_defaults(manifest, schema)
    first = stored["spec"]["gpuOptions"][0]
    assert (first["gpusPerReplica"], first["minReplicas"], first["spot"], first["maxReplicas"]) == (1, 0, False, 2)
    assert stored["spec"]["reallocation"]["targetUtilisation"] == 0.85  # set in the example
    assert "gpusPerReplica" not in manifest["spec"]["gpuOptions"][0]  # the input is left alone


def test_fields_under_preserve_unknown_fields_and_maps_are_not_unknown():
    schema = crd_schema(crd())
    manifest = good_manifest()
    manifest["spec"]["gpuOptions"][0]["affinity"] = {"nodeAffinity": {"anything": 1}}
    manifest["spec"]["gpuOptions"][0]["nodeSelector"] = {"x": "y"}
    manifest["metadata"]["labels"] = {"a": "b"}
    assert unknown_fields(manifest, schema) == []
    broken = copy.deepcopy(manifest)
    broken["spec"]["slo"]["tpot"] = 1
    broken["spec"]["gpuOptions"].append({"name": "h100", "gpu": "h100", "prize": 1})
    assert unknown_fields(broken, schema) == ["spec.slo.tpot", "spec.gpuOptions[3].prize"]


def test_several_unknown_fields_are_listed_as_the_server_does():
    manifest = good_manifest()
    manifest["spec"]["foo"] = 1
    manifest["spec"]["bar"] = 2
    errors, _ = admission_errors(manifest, crd())
    assert errors == ['strict decoding error: unknown field "spec.foo", unknown field "spec.bar"']


@pytest.mark.parametrize("parts,text", [(("spec", "gpuOptions", 0, "name"), "spec.gpuOptions[0].name"),
                                        (("spec", "workload", "static", "distribution", 1, 2),
                                         "spec.workload.static.distribution[1][2]"), ((), "")])
def test_field_paths_read_as_the_servers(parts, text):
    assert field_path(parts) == text


@pytest.mark.parametrize("value,text", [(0, "0"), (-1, "-1"), (1.5, "1.5"), (40.0, "40"), ("soon", '"soon"'),
                                        (True, "true"), (None, "null")])
def test_values_print_as_go_prints_them(value, text):
    assert go_value(value) == text
