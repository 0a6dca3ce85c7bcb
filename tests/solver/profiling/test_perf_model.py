"""The performance model's physics: what must hold whatever the constants are."""
from __future__ import annotations

import numpy as np
import pytest

from melange.solver.profiling.catalog import shipped_catalog
from melange.solver.profiling.perf_model import PerfConstants, Replica

CATALOG = shipped_catalog()
SIZES = [25, 100, 250, 500, 1000, 2000]


def rates(gpu: str, model: str = "llama-3-8b", tp: int = 1, tpot: float | None = 0.12, ttft: float | None = None,
          constants: PerfConstants = PerfConstants()) -> np.ndarray:
    inputs, outputs = np.meshgrid(SIZES, SIZES, indexing="ij")
    replica = Replica(CATALOG.gpu(gpu), CATALOG.model(model), tp, constants)
    return replica.max_rate(inputs.ravel().astype(float), outputs.ravel().astype(float), tpot, ttft).reshape(6, 6)


@pytest.mark.parametrize("gpu", ["L4", "A10G", "A100-80GB", "H100-SXM", "MI300X"])
def test_longer_inputs_never_raise_the_rate(gpu):
    r = rates(gpu)
    assert (np.diff(r, axis=0) <= 1e-9).all()


@pytest.mark.parametrize("gpu", ["L4", "A100-80GB", "H100-SXM"])
def test_longer_outputs_lower_the_rate_when_the_ttft_share_is_small(gpu):
    r = rates(gpu)
    assert (np.diff(r[:3, 1:], axis=1) <= 1e-9).all()  # short prompts: output length dominates the work


def test_a_model_that_does_not_fit_cannot_serve():
    assert not Replica(CATALOG.gpu("L4"), CATALOG.model("llama-3-70b")).fits
    assert (rates("L4", "llama-3-70b") == 0).all()
    assert (rates("T4", "llama-3-8b") == 0).all()  # 16 GB: the weights alone fill it


def test_context_length_bounds_what_can_be_served():
    replica = Replica(CATALOG.gpu("H100-SXM"), CATALOG.model("llama-2-7b"))
    assert replica.max_rate(np.array([4000.0, 4000.0]), np.array([50.0, 200.0]), 0.12, None)[1] == 0  # > 4096


def test_tensor_parallelism_raises_capacity():
    one, two, four, eight = (rates("H100-SXM", "llama-3-70b", tp) for tp in (1, 2, 4, 8))
    assert (one == 0).all() and (two == 0).all()  # 141 GB of weights: no room for a KV cache on 2 x 80 GB
    assert (four > 0).all() and (eight >= four).all() and (eight > four).any()
    small_one, small_two = rates("L4", "llama-3-8b", 1), rates("L4", "llama-3-8b", 2)
    assert (small_two >= small_one).all() and (small_two > small_one).any()


def test_a_tighter_slo_never_raises_a_rate():
    loose, tight, tighter = rates("A10G", tpot=0.12), rates("A10G", tpot=0.06), rates("A10G", tpot=0.03)
    assert (tight <= loose + 1e-9).all() and (tighter <= tight + 1e-9).all()
    with_ttft = rates("A10G", tpot=0.12, ttft=0.2)
    assert (with_ttft <= loose + 1e-9).all() and (with_ttft < loose).any()


def test_an_slo_below_one_request_alone_cannot_be_met():
    assert (rates("L4", tpot=0.02) == 0).all()  # reading 16 GB of weights at 300 GB/s takes > 50 ms per token


def test_faster_memory_serves_more():
    assert (rates("H100-SXM") >= rates("A100-80GB")).all() and (rates("A100-80GB") > rates("L4")).all()


def test_kv_cache_bounds_the_batch():
    tight = PerfConstants(gpu_memory_utilization=0.75)
    assert (rates("L4", "llama-2-7b", constants=tight) <= rates("L4", "llama-2-7b") + 1e-9).all()
