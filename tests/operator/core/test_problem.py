"""Spec -> Problem: profiles from inline, ConfigMap, shipped or estimated sources; prices; grids."""
from __future__ import annotations

import pytest
import yaml

from melange.operator.core.problem import build_problem, config_refs, default_inputs
from melange.operator.core.spec import parse_spec
from melange.solver.errors import InputError

from ..schema import ROOT

ARENA = yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text())["spec"]
L4_PROFILE = (ROOT / "examples" / "arena-llama2-7b" / "profiles" / "l4.yaml").read_text()


def test_inline_profiles_and_prices_come_through_unchanged():
    problem = build_problem(parse_spec(ARENA), None, default_inputs())
    assert [o.name for o in problem.options] == ["l4", "a10g", "a100-80gb", "h100"]
    assert [o.price_per_hour for o in problem.options] == [0.7, 1.01, 3.67, 7.516]
    assert problem.profiles[0].max_rps[0][0] == 25.14  # first cell of the measured L4 table
    assert problem.workload.rate == 4.0 and problem.workload.grid.input_edges == (25, 100, 250, 500, 1000, 2000)


def test_a_profile_from_a_config_map():
    spec = dict(ARENA, gpuOptions=[{"name": "l4", "gpu": "L4", "pricePerHour": 0.7,
                                    "profile": {"configMapRef": {"name": "profiles", "key": "l4.yaml"}}}])
    parsed = parse_spec(spec)
    assert [(r.name, r.key) for r in config_refs(parsed)] == [("profiles", "l4.yaml")]
    problem = build_problem(parsed, None, default_inputs({("profiles", "l4.yaml"): L4_PROFILE}))
    assert problem.profiles[0].max_rps[5][5] == 0.02
    with pytest.raises(InputError) as caught:
        build_problem(parsed, None, default_inputs())
    assert caught.value.where == "spec.gpuOptions[0].profile.configMapRef" and "profiles" in str(caught.value)
    with pytest.raises(InputError, match="configMapRef"):
        build_problem(parsed, None, default_inputs({("profiles", "l4.yaml"): "max_rps: [oops"}))


def test_estimated_profiles_on_the_spec_grid_and_catalog_prices():
    spec = parse_spec({"model": "m", "catalogModel": "llama-3-8b", "slo": {"tpotMs": 120},
                       "gpuOptions": [{"name": "small", "gpu": "l4"}, {"name": "big", "gpu": "h100", "gpusPerReplica": 2,
                                                                     "pricePerHour": 3.0}],
                       "workload": {"static": {"rate": 1, "distribution": [[0.5, 0.5]]},
                                    "grid": {"inputEdges": [512], "outputEdges": [128, 512]}}})
    problem = build_problem(spec, None, default_inputs())
    catalog = default_inputs().catalog
    assert problem.options[0].price_per_hour == catalog.gpu("l4").price_per_hour
    assert problem.options[1].price_per_hour == 3.0 and problem.options[1].replica_price == 6.0
    assert all(p.grid.output_edges == (128, 512) for p in problem.profiles)
    assert problem.profiles[1].gpus_per_replica == 2 and problem.profiles[0].source == "estimated"


def test_a_trace_in_a_config_map_is_binned_onto_the_grid():
    spec = parse_spec({"model": "m", "catalogModel": "llama-3-8b", "slo": {"tpotMs": 120},
                       "gpuOptions": [{"name": "l4", "gpu": "l4"}],
                       "workload": {"static": {"rate": 3, "traceConfigMapRef": {"name": "t", "key": "trace.csv"}},
                                    "grid": {"inputEdges": [100, 1000], "outputEdges": [100, 1000]}}})
    trace = "input_tokens,output_tokens\n50,50\n50,500\n500,50\n500,500\n"  # one request per bucket
    problem = build_problem(spec, None, default_inputs({("t", "trace.csv"): trace}))
    assert problem.workload.distribution == ((0.25, 0.25), (0.25, 0.25)) and problem.workload.rate == 3


@pytest.mark.parametrize("option,field", [
    ({"name": "x", "gpu": "tpu-v9"}, "spec.gpuOptions[0].gpu"),
    ({"name": "x", "gpu": "L4", "pricePerHour": 1, "gpusPerReplica": 2,
      "profile": {"inline": yaml.safe_load(L4_PROFILE)}}, "spec.gpuOptions[0].gpusPerReplica"),
    ({"name": "x", "gpu": "L4", "pricePerHour": 1,
      "profile": {"inline": {**yaml.safe_load(L4_PROFILE), "slo": {"tpot_ms": 40}}}}, "spec.gpuOptions[0].profile"),
    ({"name": "x", "gpu": "L4", "pricePerHour": 1,
      "profile": {"inline": {**yaml.safe_load(L4_PROFILE), "max_rps": [[1]]}}}, "spec.gpuOptions[0].profile.inline.max_rps"),
])
def test_what_the_schema_cannot_see_is_named(option, field):
    spec = dict(ARENA, catalogModel="llama-2-7b", gpuOptions=[option])
    with pytest.raises(InputError) as caught:
        build_problem(parse_spec(spec), None, default_inputs())
    assert caught.value.where == field, str(caught.value)


def test_an_unknown_catalog_model_names_the_field():
    spec = parse_spec({"model": "m", "catalogModel": "gpt-17", "slo": {"tpotMs": 120},
                       "gpuOptions": [{"name": "l4", "gpu": "l4"}],
                       "workload": {"static": {"rate": 1, "distribution": [[1]]},
                                    "grid": {"inputEdges": [100], "outputEdges": [100]}}})
    with pytest.raises(InputError) as caught:
        build_problem(spec, None, default_inputs())
    assert caught.value.where == "spec.catalogModel"


def a100_spec(**option) -> dict:
    """The Arena example on its A100 option alone, with `option` changes."""
    a100 = next(o for o in ARENA["gpuOptions"] if o["name"] == "a100-80gb")
    return dict(ARENA, gpuOptions=[{**a100, **option}])


def test_node_size_and_price_come_from_the_spec_or_the_catalog():
    """The A100-80GB comes 8 per p4de.24xlarge ($40.966/h in the catalog): per-GPU pricing keeps the
    node size for the NodePool's limit; `pricing: node` prices the whole instance."""
    [plain] = build_problem(parse_spec(a100_spec()), None, default_inputs()).options
    assert (plain.gpus_per_node, plain.node_priced, plain.cost(1)) == (8, False, 3.67)
    [node] = build_problem(parse_spec(a100_spec(pricing="node")), None, default_inputs()).options
    assert (node.gpus_per_node, node.node_price_per_hour, node.cost(1), node.cost(9)) == (8, 40.966, 40.966, 81.932)
    [given] = build_problem(parse_spec(a100_spec(gpusPerNode=4, nodePricePerHour=20.0)), None, default_inputs()).options
    assert (given.gpus_per_node, given.node_price_per_hour, given.cost(5)) == (4, 20.0, 40.0)
    [sized] = build_problem(parse_spec(a100_spec(gpusPerNode=4, pricing="node")), None, default_inputs()).options
    assert sized.node_price_per_hour == 4 * 3.67  # no node price given: the node's GPUs at the per-GPU price


def test_a_node_selector_on_the_instance_type_picks_the_catalog_shape():
    l4 = {"name": "l4", "gpu": "L4", "pricePerHour": 0.7, "profile": next(
        o for o in ARENA["gpuOptions"] if o["name"] == "l4")["profile"]}
    [cheapest] = build_problem(parse_spec(dict(ARENA, gpuOptions=[l4])), None, default_inputs()).options
    assert cheapest.gpus_per_node == 1  # g6.xlarge
    pinned = dict(l4, nodeSelector={"node.kubernetes.io/instance-type": "g6.12xlarge"}, pricing="node")
    [big] = build_problem(parse_spec(dict(ARENA, gpuOptions=[pinned])), None, default_inputs()).options
    assert (big.gpus_per_node, big.node_price_per_hour) == (4, 4.6016)


def test_node_pricing_without_a_known_node_size_is_named():
    h200 = a100_spec(gpu="H200", pricing="node")
    h200["gpuOptions"][0]["profile"]["inline"] = dict(h200["gpuOptions"][0]["profile"]["inline"], gpu="H200")
    with pytest.raises(InputError) as caught:
        build_problem(parse_spec(h200), None, default_inputs())
    assert caught.value.where == "spec.gpuOptions[0].pricing" and "gpusPerNode" in str(caught.value)
