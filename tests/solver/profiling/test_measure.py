"""The profiler: trial judging and rate search, and end to end against a server imitating a GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from melange.solver.buckets import BucketGrid
from melange.solver.profiling.catalog import shipped_catalog
from melange.solver.cli.main import main
from melange.solver.profiling.measure import (MeasureConfig, RateSearch, RequestResult, completion_body, fit_buckets,
                                    judge_trial, trial_size)
from melange.solver.profiling.perf_fit import Observation, fit_constants
from melange.solver.profiling.perf_model import PerfConstants
from melange.solver.profiles import Slo

from melange.testing.ports import free_port, wait_for_port
from .imitation_server import ImitatedGpu, capacity


def results(latencies: list[float], tokens: int = 10, ttft: float = 0.01) -> list[RequestResult]:
    return [RequestResult(True, ttft, latency, tokens) for latency in latencies]


def test_judge_uses_the_mean_after_warm_up_and_the_tail():
    slo = Slo(tpot_ms=50)
    assert judge_trial(1.0, results([0.4] * 10), slo, 0.2).meets  # 40 ms per token
    assert not judge_trial(1.0, results([0.6] * 10), slo, 0.2).meets
    # a cold start below the SLO is ignored, a queue that keeps growing is caught by the last third
    assert judge_trial(1.0, results([0.9, 0.9] + [0.45] * 8), slo, 0.2).meets
    growing = judge_trial(1.0, results([0.2] * 6 + [0.8] * 3), slo, 0.0)
    assert not growing.meets and "last third" in growing.reason


def test_judge_percentile_ttft_and_failures():
    assert judge_trial(1.0, results([0.4] * 9 + [2.0]), Slo(tpot_ms=50), 0).meets is False  # mean 54 ms
    assert judge_trial(1.0, results([0.4] * 9 + [2.0]), Slo(tpot_ms=50, percentile=50), 0).meets
    assert not judge_trial(1.0, results([0.1] * 5, ttft=0.3), Slo(ttft_ms=200), 0).meets
    failed = judge_trial(1.0, results([0.1] * 4) + [RequestResult(False, error="HTTP 500")], Slo(tpot_ms=50), 0)
    assert not failed.meets and "HTTP 500" in failed.reason


def test_rate_search_doubles_then_bisects_to_the_precision():
    capacity_rps = 13.0
    search = RateSearch(start=1.0, precision=0.05)
    tried = []
    while (rate := search.next_rate()) is not None:
        tried.append(rate)
        search.record(rate, rate <= capacity_rps)
    assert tried[:5] == [1, 2, 4, 8, 16]
    assert search.passed <= capacity_rps < search.failed <= search.passed * 1.05
    hopeless = RateSearch(start=1.0, precision=0.05)
    while (rate := hopeless.next_rate()) is not None:
        hopeless.record(rate, False)
    assert hopeless.passed is None


def test_trial_size_and_request_shape():
    config = MeasureConfig("http://x", Slo(tpot_ms=40), BucketGrid((10,), (10,)), trial_seconds=10, min_requests=5,
                           max_requests=50)
    assert [trial_size(r, config) for r in (0.1, 2, 100)] == [5, 20, 50]
    body = completion_body("m", 7, 3, "tokens")
    assert len(body["prompt"]) == 7 and body["min_tokens"] == body["max_tokens"] == 3 and body["ignore_eos"]
    assert len(completion_body("m", 7, 3, "text")["prompt"].split()) == 7
    assert (0, 0) in fit_buckets(BucketGrid((1, 2, 3), (1, 2))) and len(fit_buckets(BucketGrid((1,), (1,)))) == 1


def test_fit_recovers_known_constants():
    catalog = shipped_catalog()
    truth = PerfConstants(bandwidth_efficiency=0.6, compute_efficiency=0.4, step_overhead_ms=3.0,
                          sequence_overhead_ms=0.2, request_overhead_ms=0.5)
    sizes = [(25, 25), (25, 500), (500, 100), (2000, 25), (250, 250), (1000, 1000)]
    gpu, model = catalog.gpu("a10g"), catalog.model("llama-2-7b")
    probe = Observation(gpu, model, tuple(i for i, _ in sizes), tuple(o for _, o in sizes), (1.0,) * len(sizes), 0.12)
    observed = Observation(gpu, model, probe.input_tokens, probe.output_tokens, tuple(probe.estimate(truth)), 0.12)
    fitted = fit_constants([observed])
    held_out = Observation(gpu, model, (100, 4000), (100, 50), (1.0, 1.0), 0.12)  # sizes the fit never saw
    assert np.allclose(observed.estimate(fitted), observed.max_rps, rtol=0.05)
    assert np.allclose(held_out.estimate(fitted), held_out.estimate(truth), rtol=0.15)


def start_imitation(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("imitation_server.py")), str(port)])
    wait_for_port(port)
    return server


@pytest.mark.integration
def test_measure_end_to_end_against_an_imitated_gpu(tmp_path, capsys):
    gpu = ImitatedGpu()
    port = free_port()
    server = start_imitation(port)
    try:
        grid = tmp_path / "grid.yaml"
        grid.write_text(yaml.safe_dump({"input_edges": [64, 1024, 2048], "output_edges": [32]}))
        output = tmp_path / "profile.yaml"
        state = tmp_path / "profile.yaml.state.json"
        # an interrupted earlier run finished bucket 1 already: it must be kept, not measured again
        fingerprint = {"endpoint": f"http://127.0.0.1:{port}", "model": "llama-2-7b", "gpu": "L4", "tp": 1,
                       "slo": {"tpot_ms": 20.0, "ttft_ms": None}, "grid": yaml.safe_load(grid.read_text()),
                       "fit": False, "prompt": "tokens"}
        state.write_text(json.dumps({"fingerprint": fingerprint, "buckets": {"1,0": {"max_rps": 1.2345,
                                                                                    "trials": []}}}))
        code = main(["profile", "measure", "--endpoint", f"http://127.0.0.1:{port}", "--model", "llama-2-7b",
                     "--gpu", "l4", "--tpot-ms", "20", "--grid", str(grid), "--trial-seconds", "8",
                     "--min-requests", "10", "--max-requests", "500", "--output", str(output)])
        assert code == 0
    finally:
        server.terminate()
        server.wait(timeout=10)
    profile = yaml.safe_load(output.read_text())
    assert profile["provenance"]["source"] == "measured"
    truth = capacity(gpu, 64, 32, 0.020)
    measured = profile["max_rps"][0][0]
    assert measured == pytest.approx(truth, rel=0.10), f"measured {measured:.2f} req/s, capacity {truth:.2f}"
    assert profile["max_rps"][1][0] == 1.2345  # resumed from the state file
    assert profile["max_rps"][2][0] is None  # 2048 + 32 tokens exceed the server's max_model_len
    progress = capsys.readouterr().err
    assert "buckets" in progress  # the progress bar
    print(progress, f"capacity {truth:.2f} req/s")


@pytest.mark.integration
def test_fit_mode_fits_the_estimator_to_the_measured_buckets(tmp_path, capsys):
    """`--fit` resumed from a state file holding its six buckets: no trial runs, the constants are
    fitted to those rates and the whole grid is estimated with them."""
    catalog = shipped_catalog()
    gpu, model = catalog.gpu("a10g"), catalog.model("llama-2-7b")
    grid = BucketGrid((25, 100, 250, 500, 1000, 2000), (25, 100, 250, 500, 1000, 2000))
    truth = PerfConstants(bandwidth_efficiency=0.6, step_overhead_ms=3.0, request_overhead_ms=1.0)
    picks = fit_buckets(grid)
    probe = Observation(gpu, model, tuple(grid.input_edges[i] for i, _ in picks),
                        tuple(grid.output_edges[j] for _, j in picks), (1.0,) * len(picks), 0.12)
    measured = dict(zip(picks, probe.estimate(truth)))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    fingerprint = {"endpoint": endpoint, "model": "llama-2-7b", "gpu": "A10G", "tp": 1,
                   "slo": {"tpot_ms": 120.0, "ttft_ms": None}, "grid": grid.to_dict(), "fit": True, "prompt": "tokens"}
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"fingerprint": fingerprint, "buckets": {
        f"{i},{j}": {"max_rps": float(rate), "trials": []} for (i, j), rate in measured.items()}}))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid.to_dict()))
    output = tmp_path / "fitted.yaml"
    server = start_imitation(port)
    try:
        code = main(["profile", "measure", "--endpoint", endpoint, "--model", "llama-2-7b", "--gpu", "a10g",
                     "--tpot-ms", "120", "--grid", str(grid_file), "--fit", "--state", str(state), "-o", str(output)])
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert code == 0
    profile = yaml.safe_load(output.read_text())
    assert profile["provenance"]["source"] == "estimated" and len(profile["provenance"]["fitted_to"]) == len(picks)
    for (i, j), rate in measured.items():
        assert profile["max_rps"][i][j] == pytest.approx(rate, rel=0.05)
    assert "req/s:" not in capsys.readouterr().err  # resumed: no trial ran


def test_arrivals_keep_their_schedule_on_a_loop_that_wakes_late():
    """Virtual time: every sleep wakes 5 ms late (a loaded CPU). Starts must stay within 5 ms of
    their Poisson schedule, so the trial offers the rate it is judged at; sleeping the gaps one
    after another would drift by 5 ms per request (the cause of a measured capacity 12% too high)."""
    import asyncio
    import random

    from melange.solver.profiling.measure import arrival_offsets, dispatch

    late_s = 0.005
    now = [100.0]
    started: list[float] = []

    async def late_sleep(seconds: float) -> None:
        now[0] += seconds + late_s
        await asyncio.sleep(0)

    async def request() -> RequestResult:
        return RequestResult(True, 0.01, 0.1, 10)

    def start():
        started.append(now[0])  # when dispatch starts the request, not when the loop first runs it
        return request()

    offsets = arrival_offsets(50.0, 200, random.Random(3))
    results = asyncio.run(dispatch(offsets, start, clock=lambda: now[0], sleep=late_sleep))
    assert len(results) == len(started) == 200
    lags = [t - 100.0 - offset for t, offset in zip(started, offsets)]
    assert min(lags) >= 0 and max(lags) <= late_s + 1e-9
