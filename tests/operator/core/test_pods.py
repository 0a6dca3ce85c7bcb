"""What a pool's pods need on a GPU node: placement on their GPU type, sizes, cache, context, grace."""
from __future__ import annotations

import pytest

from melange.operator.core.pods import gpu_affinity, pod_shape
from melange.operator.core.spec import parse_spec
from melange.solver.buckets import BucketGrid
from melange.solver.profiles import Profile, Slo
from melange.solver.profiling.catalog import shipped_catalog

CATALOG = shipped_catalog()
# llama-3-8b in the shipped catalog: 8.03 B parameters, 8192 tokens of context
WEIGHTS_GIB = 8.03e9 * 2 / 2**30  # 14.96 GiB in bf16


def spec(option: dict | None = None, **overrides):
    data = {"model": "meta-llama/Meta-Llama-3-8B", "slo": {"tpotMs": 50, "ttftMs": 500},
            "gpuOptions": [option or {"name": "l4", "gpu": "L4"}], "catalogModel": "llama-3-8b",
            "workload": {"static": {"rate": 1, "distribution": [[1]]}}}
    data.update(overrides)
    return parse_spec(data)


def profiles(inputs=(512, 2048), outputs=(256, 1024), gpu: str = "L4", tp: int = 1) -> dict:
    return {"l4": Profile("llama-3-8b", gpu, BucketGrid(inputs, outputs), ((1.0, 1.0), (1.0, 1.0)), Slo(tpot_ms=50),
                          tp, {"source": "measured"})}


def terms(affinity: dict) -> list[dict]:
    return affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


@pytest.mark.parametrize("gpu, product, instance", [
    ("L4", "NVIDIA-L4", "g6.xlarge"), ("A10G", "NVIDIA-A10G", "g5.12xlarge"),
    ("A100-40GB", "NVIDIA-A100-SXM4-40GB", "p4d.24xlarge"), ("A100-80GB", "NVIDIA-A100-SXM4-80GB", "p4de.24xlarge"),
    ("H100", "NVIDIA-H100-80GB-HBM3", "p5.48xlarge")])
def test_each_gpu_type_is_placed_by_its_product_label_or_its_instance_types(gpu, product, instance):
    found = terms(gpu_affinity(CATALOG.gpu(gpu)))
    assert product in found[0]["matchExpressions"][0]["values"]
    assert found[0]["matchExpressions"][0]["key"] == "nvidia.com/gpu.product"
    assert instance in found[1]["matchExpressions"][0]["values"]
    assert found[1]["matchExpressions"][0]["key"] == "node.kubernetes.io/instance-type"


def test_a100_40_and_80_gb_never_share_nodes():
    forty, eighty = terms(gpu_affinity(CATALOG.gpu("A100-40GB"))), terms(gpu_affinity(CATALOG.gpu("A100-80GB")))
    for k in range(2):
        assert not set(forty[k]["matchExpressions"][0]["values"]) & set(eighty[k]["matchExpressions"][0]["values"])


def test_the_options_own_selector_or_affinity_replaces_the_default():
    default = pod_shape(spec(), spec().options[0], profiles(), CATALOG)
    assert terms(default.affinity)[0]["matchExpressions"][0]["values"] == ["NVIDIA-L4"]
    selected = spec({"name": "l4", "gpu": "L4", "nodeSelector": {"pool": "inference"}})
    assert pod_shape(selected, selected.options[0], profiles(), CATALOG).affinity is None
    custom = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    own = spec({"name": "l4", "gpu": "L4", "affinity": custom})
    assert pod_shape(own, own.options[0], profiles(), CATALOG).affinity == custom
    unknown = spec({"name": "x", "gpu": "Gaudi3", "profile": {"inline": {}}})
    assert pod_shape(unknown, unknown.options[0], profiles(), CATALOG).affinity is None


def test_pods_request_cpu_memory_and_cache_from_the_model_and_gpus():
    one = pod_shape(spec(), spec().options[0], profiles(), CATALOG)
    # 6 GiB runtime + 1.5 GiB per GPU worker + a quarter of the weights; 1 CPU + 1 per GPU;
    # cache 1.25 x weights + 5 GiB. It fits a g6.xlarge (4 vCPU, 16 GiB).
    memory = f"{-(-(6 + 1.5 + 0.25 * WEIGHTS_GIB) // 1):.0f}Gi"
    cache = f"{-(-(1.25 * WEIGHTS_GIB + 5) // 1):.0f}Gi"
    assert (memory, cache) == ("12Gi", "24Gi")
    assert one.resources["requests"] == {"cpu": "2", "memory": memory, "ephemeral-storage": cache,
                                         "nvidia.com/gpu": "1"}
    assert one.resources["limits"] == {"memory": memory, "nvidia.com/gpu": "1"}  # Burstable: no CPU limit
    assert one.volumes == ({"name": "model-cache", "emptyDir": {"sizeLimit": cache}},)
    two = spec({"name": "l4", "gpu": "L4", "gpusPerReplica": 2})
    shape = pod_shape(two, two.options[0], profiles(tp=2), CATALOG)
    assert shape.resources["requests"]["cpu"] == "3" and shape.resources["limits"]["nvidia.com/gpu"] == "2"
    assert shape.resources["requests"]["memory"] == f"{-(-(6 + 3 + 0.25 * WEIGHTS_GIB) // 1):.0f}Gi"


def test_the_users_resources_and_cache_win():
    own = spec(serving={"resources": {"requests": {"cpu": "12"}, "limits": {"cpu": "16", "memory": "48Gi"}},
                        "modelCache": {"persistentVolumeClaim": {"claimName": "weights"}},
                        "hfTokenSecretRef": {"name": "hf", "key": "token"}})
    shape = pod_shape(own, own.options[0], profiles(), CATALOG)
    assert shape.resources["requests"]["cpu"] == "12" and shape.resources["limits"] == {
        "cpu": "16", "memory": "48Gi", "nvidia.com/gpu": "1"}
    assert "ephemeral-storage" not in shape.resources["requests"]  # the cache is a claim, not node disk
    assert shape.volumes == ({"name": "model-cache", "persistentVolumeClaim": {"claimName": "weights"}},)
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in shape.env
    assert {"name": "HF_HOME", "value": "/models/huggingface"} in shape.env


def test_one_context_length_from_the_grid_within_the_models_context():
    assert pod_shape(spec(), spec().options[0], profiles(), CATALOG).args == ("--max-model-len", str(2048 + 1024))
    long = profiles(inputs=(4096, 16000), outputs=(1024, 4096))  # 20096 > llama-3-8b's 8192
    assert pod_shape(spec(), spec().options[0], long, CATALOG).args == ("--max-model-len", "8192")


def test_the_grace_period_lets_the_longest_request_finish_at_the_slo():
    shape = pod_shape(spec(), spec().options[0], profiles(), CATALOG)
    # preStop 10 s + 10 s margin + TTFT 0.5 s + 1024 output tokens x 50 ms
    assert shape.grace_s == 10 + 10 + int(-(-(0.5 + 1024 * 0.05) // 1))
