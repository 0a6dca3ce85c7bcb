"""Estimated profiles, the shipped ones, and options/profiles straight from the catalog."""
from __future__ import annotations

import datetime
from importlib import metadata

import numpy as np
import pytest

from melange.solver.buckets import BucketGrid, paper_grid
from melange.solver.profiling.catalog import shipped_catalog
from melange.solver.profiling.catalog_inputs import catalog_options_and_profiles, parse_gpu_choices, parse_prices
from melange.solver.errors import InputError
from melange.solver.profiling.estimate import bucket_size, estimate_profile, tool_version
from melange.solver.profiling.perf_model import PerfConstants
from melange.solver.inputs import load_profiles
from melange.solver.profiles import Slo, profile_from_dict
from melange.solver.profiling.shipped_profiles import SHIPPED_PAIRS, SHIPPED_SLOS, build_shipped, render, shipped_profiles

from ...conftest import EXAMPLES

CATALOG = shipped_catalog()


def test_estimated_profile_is_a_valid_profile_with_provenance():
    profile = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), Slo(tpot_ms=120), paper_grid())
    again = profile_from_dict(profile.to_dict(), "round trip")
    assert again.max_rps == profile.max_rps and again.source == "estimated"
    assert profile.provenance["constants"]["bandwidth_efficiency"] > 0
    assert profile.max_rps[0][0] > profile.max_rps[5][0] > 0
    assert profile.max_rps[9][0] is None  # 12001+ input tokens exceed Llama-3-8B's 8192 context
    fast = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("h100"), Slo(tpot_ms=120), paper_grid())
    assert fast.max_rps[8][2] is not None and fast.max_rps[8][3] is None  # 8001 + 101 fits, 8001 + 251 does not


def test_bucket_size_shortens_to_the_context():
    grid = paper_grid()
    assert bucket_size(grid, 0, 0, 8192) == (25, 25)
    assert bucket_size(grid, 7, 1, 8192) == (8000, 100)  # fits as it is
    assert bucket_size(grid, 7, 2, 8192) == (7942, 250)  # input shortened first
    assert bucket_size(grid, 8, 2, 8192) == (8001, 191)  # then output
    assert bucket_size(grid, 8, 3, 8192) is None  # its smallest request, 8001 + 251, is too long


@pytest.mark.parametrize("slo,tp,where", [(Slo(tpot_ms=50, percentile=90), 1, "slo.percentile"),
                                          (Slo(), 1, "slo"), (Slo(tpot_ms=50), 3, "tensor_parallel")])
def test_estimate_rejects_what_it_cannot_model(slo, tp, where):
    with pytest.raises(InputError) as error:
        estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), slo, paper_grid(), tensor_parallel=tp)
    assert str(error.value).startswith(where)


def test_shipped_profiles_match_the_current_estimator():
    """Fails when the catalog or the model changed without `python -m melange.solver.profiling.shipped_profiles`."""
    fresh = build_shipped(CATALOG, date="-")
    for model, profiles in fresh.items():
        shipped = shipped_profiles(model)
        assert [(p.gpu, p.gpus_per_replica, p.slo) for p in shipped] == [
            (p.gpu, p.gpus_per_replica, p.slo) for p in profiles]
        assert [p.max_rps for p in shipped] == [p.max_rps for p in profiles], f"{model}: regenerate shipped profiles"


def test_every_shipped_profile_serves_something_and_says_it_is_estimated():
    for model, pairs in SHIPPED_PAIRS.items():
        profiles = shipped_profiles(model)
        assert len(profiles) == len(pairs) * len(SHIPPED_SLOS)
        for profile in profiles:
            assert profile.source == "estimated"
            if profile.slo.tpot_ms == 120:
                assert any(rate for row in profile.max_rps for rate in row), f"{model} on {profile.gpu}"
    assert render(shipped_profiles("llama-3-8b")[:1]).startswith("# Estimated profiles")


def test_catalog_options_use_shipped_profiles_when_they_match():
    model = CATALOG.model("llama-3-8b")
    options, profiles = catalog_options_and_profiles(CATALOG, model, parse_gpu_choices("l4,h100:2"),
                                                     Slo(tpot_ms=120), paper_grid(), {"h100": 4.0})
    assert [(o.name, o.gpu, o.gpus_per_replica, o.price_per_hour) for o in options] == [
        ("l4", "L4", 1, 0.70), ("h100-sxm-x2", "H100-SXM", 2, 4.0)]
    assert profiles[0] in shipped_profiles("llama-3-8b")
    assert profiles[1] not in shipped_profiles("llama-3-8b")  # no shipped 2 x H100 for this model: estimated now
    other_grid = BucketGrid((100, 1000), (100, 1000))
    _, fresh = catalog_options_and_profiles(CATALOG, model, [("l4", 1)], Slo(tpot_ms=120), other_grid)
    assert fresh[0].grid == other_grid and fresh[0].source == "estimated"


@pytest.mark.parametrize("text,message", [("l4,,a10g", "empty GPU name"), ("h100:two", "not a whole number"),
                                          ("h100:0", "0 GPUs per replica")])
def test_bad_gpu_choices(text, message):
    with pytest.raises(InputError) as error:
        parse_gpu_choices(text)
    assert message in str(error.value)


def test_bad_prices():
    assert parse_prices(["H100=4.5"]) == {"h100": 4.5}
    for bad in (["h100"], ["h100=free"], ["h100=-1"]):
        with pytest.raises(InputError):
            parse_prices(bad)
    with pytest.raises(InputError) as error:
        catalog_options_and_profiles(CATALOG, CATALOG.model("llama-3-8b"), [("l4", 1)], Slo(tpot_ms=120),
                                     paper_grid(), {"a10g": 1.0})
    assert "not among --gpus" in str(error.value)


@pytest.mark.parametrize("model,gpu,tp", [("llama-3-8b", "l4", 1), ("llama-2-7b", "h100", 1),
                                          ("llama-3-70b", "h100", 4), ("mixtral-8x7b", "h200", 1)])
def test_longer_request_buckets_never_get_a_higher_rate(model, gpu, tp):
    profile = estimate_profile(CATALOG.model(model), CATALOG.gpu(gpu), Slo(tpot_ms=120), paper_grid(), tp)
    for j in range(profile.grid.shape[1]):
        column = [row[j] for row in profile.max_rps if row[j] is not None]
        assert column == sorted(column, reverse=True), f"output bucket {j}: {column}"
    for i, row in enumerate(profile.max_rps):
        served = [rate for rate in row if rate is not None]
        assert served == sorted(served, reverse=True), f"input bucket {i}: {served}"


@pytest.mark.parametrize("gpu", ["l4", "a10g", "l40s", "a100-80gb", "h100"])
def test_a_tighter_slo_never_raises_a_bucket_rate(gpu):
    profiles = [estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu(gpu), Slo(tpot_ms=t), paper_grid())
                for t in (200, 120, 80, 50, 30)]
    for looser, tighter in zip(profiles, profiles[1:]):
        for loose_row, tight_row in zip(looser.max_rps, tighter.max_rps):
            for loose, tight in zip(loose_row, tight_row):
                assert tight is None or (loose is not None and tight <= loose)


# The calibration table in docs/cli.md (shipped constants): median and p90 of |estimate - measured| /
# measured per GPU, rounded to whole percent there; here each bound is that figure plus the rounding.
STATED_CALIBRATION = {"l4": (0.10, 0.19), "a10g": (0.05, 0.14), "a100-80gb": (0.14, 0.27), "h100": (0.12, 0.37)}


@pytest.mark.parametrize("gpu", sorted(STATED_CALIBRATION))
def test_estimate_is_within_the_stated_error_of_the_measured_llama_2_tables(gpu):
    """Against an independent reference: the Mélange authors' measured Llama-2-7B tables (vLLM 0.2.7,
    120 ms mean TPOT) shipped in the example, on their own 6x6 grid."""
    [measured] = load_profiles(EXAMPLES / "arena-llama2-7b" / "profiles" / f"{gpu}.yaml")
    estimate = estimate_profile(CATALOG.model("llama-2-7b"), CATALOG.gpu(gpu), Slo(tpot_ms=120), measured.grid)
    errors = [abs(e - m) / m for est_row, meas_row in zip(estimate.max_rps, measured.max_rps)
              for e, m in zip(est_row, meas_row)]
    assert len(errors) == 36
    median, p90 = np.median(errors), np.percentile(errors, 90)
    stated_median, stated_p90 = STATED_CALIBRATION[gpu]
    assert median <= stated_median + 0.005 and p90 <= stated_p90 + 0.005, (median, p90)


def test_provenance_says_how_the_profile_was_made():
    profile = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), Slo(tpot_ms=120), paper_grid(),
                               date="2026-01-02")
    # KV cache by hand: 0.9 x 24 GB - 1.5 GB reserve = 20.1 GB; less 8.03e9 x 2 bytes of weights = 4.04 GB;
    # a token takes 2 (K, V) x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072 bytes -> 30,822.8 tokens.
    assert profile.provenance == {
        "source": "estimated", "method": "roofline + continuous-batching model (melange.solver.profiling.perf_model)",
        "tool_version": metadata.version("melange-operator"), "date": "2026-01-02",
        "gpu_spec": {"memory_gb": 24.0, "bandwidth_gb_s": CATALOG.gpu("l4").bandwidth_gb_s,
                     "fp16_tflops": CATALOG.gpu("l4").fp16_tflops},
        "constants": PerfConstants().to_dict(), "kv_cache_tokens": 30822}
    today = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), Slo(tpot_ms=120), paper_grid())
    assert today.provenance["date"] == datetime.date.today().isoformat()


def test_tool_version_is_unknown_without_an_installed_package(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", missing)
    assert tool_version() == "unknown"


def test_a_model_too_big_for_the_gpu_is_refused_with_the_sizes():
    with pytest.raises(InputError) as caught:  # 2 bytes per parameter: 141 GB of weights on a 24 GB GPU
        estimate_profile(CATALOG.model("llama-3-70b"), CATALOG.gpu("l4"), Slo(tpot_ms=120), paper_grid())
    assert "llama-3-70b needs 141 GB of weights; L4 has 24 GB" in str(caught.value)


def test_a_ttft_bound_lowers_long_prompt_rates():
    grid = BucketGrid((100, 4000), (100,))
    loose = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), Slo(tpot_ms=120), grid)
    tight = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), Slo(tpot_ms=120, ttft_ms=400), grid)
    assert tight.max_rps[1][0] is None or tight.max_rps[1][0] < loose.max_rps[1][0]


def test_smallest_requests_against_a_tiny_context():
    grid = paper_grid()
    assert bucket_size(grid, 0, 0, 2) == (1, 1)  # 1 input + 1 output token fit a 2-token context
    assert bucket_size(grid, 0, 0, 1) is None
    assert bucket_size(grid, 1, 1, 52) == (26, 26)  # the smallest of in(25,100] out(25,100]
    assert bucket_size(grid, 1, 1, 51) is None


@pytest.mark.parametrize("slo,tp,message", [
    (Slo(), 1, "slo: no latency bound (allowed: tpot_ms and/or ttft_ms)"),
    (Slo(tpot_ms=50, percentile=90), 1,
     "slo.percentile: p90 cannot be estimated (allowed: the mean (leave percentile out); measure the server for "
     "percentiles)"),
    (Slo(tpot_ms=50), 0, "tensor_parallel: 0 GPUs per replica (allowed: 1 or more)"),
    (Slo(tpot_ms=50), 3, "tensor_parallel: 3 does not divide the model's 32 attention heads "
                         "(allowed: a divisor of the attention heads)")])
def test_estimate_errors_say_what_is_allowed(slo, tp, message):
    with pytest.raises(InputError) as error:
        estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), slo, paper_grid(), tensor_parallel=tp)
    assert str(error.value) == message


def test_constants_reach_the_model():
    slower = PerfConstants(bandwidth_efficiency=0.4)
    default = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), Slo(tpot_ms=120), paper_grid())
    fitted = estimate_profile(CATALOG.model("llama-3-8b"), CATALOG.gpu("l4"), Slo(tpot_ms=120), paper_grid(),
                              constants=slower)
    assert fitted.provenance["constants"]["bandwidth_efficiency"] == 0.4
    assert fitted.max_rps != default.max_rps  # half the bandwidth: slower decode steps
