"""Reading the LLMService spec: defaults, and errors that name the field (what the schema cannot catch)."""
from __future__ import annotations

import pytest
import yaml

from melange.operator.core.spec import DEFAULT_TARGET_UTILISATION, parse_spec
from melange.solver.errors import InputError
from melange.solver.profiles import Slo

from ..schema import ROOT

SPEC = yaml.safe_load((ROOT / "examples" / "operator" / "llama-3-8b.yaml").read_text())["spec"]


def minimal(**overrides) -> dict:
    spec = {"model": "m", "catalogModel": "llama-3-8b", "slo": {"tpotMs": 100},
            "gpuOptions": [{"name": "l4", "gpu": "l4"}], "workload": {"static": {"rate": 2, "distribution": [[1]]}}}
    spec.update(overrides)
    return spec


def test_the_example_reads_with_its_values_and_the_defaults():
    spec = parse_spec(SPEC)
    assert spec.model == "meta-llama/Meta-Llama-3-8B-Instruct" and spec.catalog_model == "llama-3-8b"
    assert spec.slo == Slo(tpot_ms=120)
    assert [o.name for o in spec.options] == ["l4", "a10g", "a100"]
    assert spec.option("a100").max_replicas == 4 and spec.option("l4").max_replicas is None
    assert spec.workload.static.rate == 6 and spec.workload.grid.input_edges == (250, 1000, 4000)
    assert (spec.mode, spec.routing_mode, spec.node_pool_provider) == ("apply", "routable", "none")
    assert spec.reallocation.interval_s == 60 and spec.reallocation.cooldown_s == 600
    assert spec.serving.args == () and spec.router_replicas == 2
    assert (spec.serving.hf_token_ref.name, spec.serving.hf_token_ref.key) == ("hf-token", "token")


def test_defaults_of_a_minimal_spec():
    spec = parse_spec(minimal())
    assert spec.reallocation.target_utilisation == DEFAULT_TARGET_UTILISATION == 0.85
    assert spec.options[0].gpus_per_replica == 1 and spec.options[0].min_replicas == 0
    assert spec.serving.port == 8000 and spec.workload.source == "static"


@pytest.mark.parametrize("change,field", [
    ({"gpuOptions": [{"name": "l4", "gpu": "l4"}, {"name": "l4", "gpu": "a10g"}]}, "spec.gpuOptions[1].name"),
    ({"gpuOptions": [{"name": "L4", "gpu": "l4"}]}, "spec.gpuOptions[0].name"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "minReplicas": 3, "maxReplicas": 1}]}, "spec.gpuOptions[0].minReplicas"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "gpusPerReplica": 0}]}, "spec.gpuOptions[0].gpusPerReplica"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "spot": "yes"}]}, "spec.gpuOptions[0].spot"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "profile": {}}]}, "spec.gpuOptions[0].profile"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "colour": "red"}]}, "spec.gpuOptions[0].colour"),
    ({"catalogModel": None}, "spec.catalogModel"),
    ({"slo": {}}, "spec.slo"),
    ({"slo": {"tpotMs": -5}}, "spec.slo.tpotMs"),
    ({"mode": "maybe"}, "spec.mode"),
    ({"routingMode": "random"}, "spec.routingMode"),
    ({"workload": {"static": {"rate": 2}}}, "spec.workload.static"),
    ({"workload": {"source": "static"}}, "spec.workload.static"),
    ({"workload": {"static": {"rate": "fast", "distribution": [[1]]}}}, "spec.workload.static.rate"),
    ({"reallocation": {"interval": "often"}}, "spec.reallocation.interval"),
    ({"reallocation": {"targetUtilisation": 0}}, "spec.reallocation.targetUtilisation"),
    ({"nodePools": {"provider": "karpenter"}}, "spec.nodePools.nodeClassRef"),
    ({"serving": {"args": ["--max-num-seqs", 64]}}, "spec.serving.args[1]"),
    ({"serving": {"port": 0}}, "spec.serving.port"),
    ({"router": {"replicas": 0}}, "spec.router.replicas"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "pricing": "hourly"}]}, "spec.gpuOptions[0].pricing"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "nodePricePerHour": 4}]}, "spec.gpuOptions[0].nodePricePerHour"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "gpusPerReplica": 2, "gpusPerNode": 1}]},
     "spec.gpuOptions[0].gpusPerNode"),
    ({"gpuOptions": [{"name": "l4", "gpu": "l4", "gpusPerNode": 4, "nodePricePerHour": 0}]},
     "spec.gpuOptions[0].nodePricePerHour"),
    ({"nodePools": {"disruption": {"expireAfter": "30d"}}}, "spec.nodePools.disruption.expireAfter"),
    ({"nodePools": {"disruption": {"consolidateAfter": 300}}}, "spec.nodePools.disruption.consolidateAfter"),
    ({"nodePools": {"disruption": {"budgets": [{"nodes": 1}]}}}, "spec.nodePools.disruption.budgets[0].nodes"),
    ({"nodePools": {"disruption": {"budgets": [{"nodes": "1", "reasons": ["Expired"]}]}}},
     "spec.nodePools.disruption.budgets[0].reasons[0]"),
    ({"nodePools": {"disruption": {"budgets": [{"nodes": "0", "schedule": "@daily"}]}}},
     "spec.nodePools.disruption.budgets[0]"),
    ({"nodePools": {"disruption": {"ttl": "1h"}}}, "spec.nodePools.disruption.ttl"),
])
def test_errors_name_the_field(change, field):
    with pytest.raises(InputError) as caught:
        parse_spec(minimal(**change))
    assert caught.value.where == field, str(caught.value)


def test_a_spec_that_is_not_a_mapping():
    with pytest.raises(InputError, match="spec: expected a mapping"):
        parse_spec(["model"])


def test_node_pricing_fields_and_their_defaults():
    plain = parse_spec(minimal()).options[0]
    assert (plain.pricing, plain.gpus_per_node, plain.node_price_per_hour) == ("gpu", None, None)
    priced = parse_spec(minimal(gpuOptions=[{"name": "a100", "gpu": "a100", "gpusPerNode": 8,
                                             "nodePricePerHour": 27.45}])).options[0]
    assert (priced.pricing, priced.gpus_per_node, priced.node_price_per_hour) == ("node", 8, 27.45)
    sized = parse_spec(minimal(gpuOptions=[{"name": "a100", "gpu": "a100", "gpusPerNode": 8}])).options[0]
    assert sized.pricing == "gpu"  # a node size alone sets limits, not prices
    catalog = parse_spec(minimal(gpuOptions=[{"name": "a100", "gpu": "a100", "pricing": "node"}])).options[0]
    assert (catalog.pricing, catalog.gpus_per_node) == ("node", None)


def test_node_pool_disruption_defaults():
    disruption = parse_spec(minimal()).node_pool_disruption
    assert (disruption.expire_after, disruption.consolidate_after, disruption.budgets) == ("Never", "5m", ({"nodes": "1"},))


@pytest.mark.parametrize("args, index, words", [
    (["--disable-log-stats"], 0, "metrics the operator reads"),
    (["--enable-prefix-caching", "--served-model-name", "other"], 1, "contradicts spec.model"),
    (["--served-model-name=other"], 0, "contradicts spec.model"),
    (["--port", "9000"], 0, "contradicts spec.serving.port"),
])
def test_serving_args_that_break_the_operator_are_refused(args, index, words):
    with pytest.raises(InputError) as error:
        parse_spec(minimal(serving={"args": args}))
    assert error.value.where == f"spec.serving.args[{index}]" and words in str(error.value)


def test_serving_args_that_agree_with_the_spec_pass():
    model = minimal()["model"]
    spec = parse_spec(minimal(serving={"args": ["--served-model-name", model, "--port=8000", "--max-model-len", "4096"]}))
    assert spec.serving.args[-1] == "4096"


def test_model_cache_and_token_are_read():
    spec = parse_spec(minimal(serving={"modelCache": {"persistentVolumeClaim": {"claimName": "weights"}},
                                       "hfTokenSecretRef": {"name": "hf", "key": "token"}}))
    assert spec.serving.model_cache == {"persistentVolumeClaim": {"claimName": "weights"}}
    assert (spec.serving.hf_token_ref.name, spec.serving.hf_token_ref.key) == ("hf", "token")
    with pytest.raises(InputError) as error:
        parse_spec(minimal(serving={"modelCache": {"emptyDir": {}, "persistentVolumeClaim": {"claimName": "w"}}}))
    assert error.value.where == "spec.serving.modelCache"


def test_the_scale_up_window_defaults_to_2m_below_the_window_and_0s_turns_it_off():
    def scale_up(prometheus: dict):
        return parse_spec({"model": "m", "catalogModel": "llama-3-8b", "slo": {"tpotMs": 100},
                           "gpuOptions": [{"name": "l4", "gpu": "l4"}],
                           "workload": {"source": "prometheus", "prometheus": prometheus}}).workload.prometheus.scale_up
    assert scale_up({}) == ("2m", 120.0)  # the 10m window's default
    assert scale_up({"window": "2m"}) is None and scale_up({"window": "90s"}) is None  # not shorter: none
    assert scale_up({"window": "5m", "scaleUpWindow": "30s"}) == ("30s", 30.0)
    assert scale_up({"scaleUpWindow": "0s"}) is None and scale_up({"scaleUpWindow": "0"}) is None
    with pytest.raises(InputError) as error:
        scale_up({"window": "5m", "scaleUpWindow": "5m"})
    assert error.value.where == "spec.workload.prometheus.scaleUpWindow"
    assert "not shorter than the window (5m)" in str(error.value)
    with pytest.raises(InputError) as error:
        scale_up({"scaleUpWindow": "soon"})
    assert error.value.where == "spec.workload.prometheus.scaleUpWindow"
