"""`melange profile estimate` and `melange solve --model --gpus` from the command line."""
from __future__ import annotations

import random

import yaml

from .run_cli import run


def test_profile_estimate_writes_a_profile(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"input_edges": [128, 1024], "output_edges": [64, 512]}))
    out = tmp_path / "l4.yaml"
    code, _, err = run(capsys, "profile", "estimate", "--model", "mistral-7b", "--gpu", "L4", "--tpot-ms", "100",
                       "--ttft-ms", "2000", "--grid", grid, "-o", out)
    assert code == 0 and "wrote" in err
    profile = yaml.safe_load(out.read_text())
    assert profile["gpu"] == "L4" and profile["provenance"]["source"] == "estimated"
    assert profile["slo"] == {"tpot_ms": 100.0, "ttft_ms": 2000.0}
    assert len(profile["max_rps"]) == 2 and profile["max_rps"][0][0] > profile["max_rps"][1][1] > 0
    code, stdout, _ = run(capsys, "profile", "estimate", "--model", "llama-3-70b", "--gpu", "h100", "--tp", "4",
                          "--tpot-ms", "60")
    assert code == 0 and yaml.safe_load(stdout)["gpus_per_replica"] == 4


def test_profile_estimate_errors_are_one_line(capsys):
    for argv, message in ((["--gpu", "l4"], "no SLO"), (["--gpu", "v100", "--tpot-ms", "50"], "unknown GPU"),
                          (["--gpu", "l4", "--tpot-ms", "-5"], "--tpot-ms")):
        code, out, err = run(capsys, "profile", "estimate", "--model", "llama-3-8b", *argv)
        assert code == 2 and message in err and out == "" and len(err.strip().splitlines()) == 1


def test_solve_from_the_catalog_needs_no_profiles(tmp_path, capsys):
    rng = random.Random(3)
    trace = tmp_path / "my.csv"
    sizes = [(int(rng.lognormvariate(5, 1.2)) + 1, int(rng.lognormvariate(5, 0.8)) + 1) for _ in range(3000)]
    trace.write_text("input_tokens,output_tokens\n" + "".join(f"{i},{o}\n" for i, o in sizes if i + o <= 8192))
    code, out, err = run(capsys, "solve", "--model", "llama-3-8b", "--gpus", "l4,a10g,a100-80gb,h100", "--rate", "8",
                         "--trace", trace)
    assert code == 0, err
    assert "estimates from specs" in out and "rate 8 req/s" in out
    for option in ("l4", "a10g", "a100-80gb", "h100-sxm"):
        assert option in out
    code, out, _ = run(capsys, "solve", "--model", "llama-3-8b", "--gpus", "l4,h100", "--rate", "8", "--trace", trace,
                       "--price", "h100=2.0", "--tpot-ms", "40", "--output", "json")
    assert code == 0 and '"h100-sxm"' in out


def test_solve_from_the_catalog_errors(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("10,10\n20,20\n")
    for argv, message in ((["--model", "llama-3-8b", "--trace", trace], "without --gpus"),
                          (["--gpus", "l4", "--trace", trace], "without --model"),
                          (["--model", "llama-3-8b", "--gpus", "l4"], "no workload"),
                          (["--model", "gpt-5", "--gpus", "l4", "--trace", trace], "unknown model")):
        code, _, err = run(capsys, "solve", *argv)
        assert code == 2 and message in err, err


def test_measure_an_unreachable_server_exits_3(tmp_path, capsys):
    code, out, err = run(capsys, "profile", "measure", "--endpoint", "http://127.0.0.1:9", "--model", "llama-3-8b",
                         "--gpu", "l4", "--tpot-ms", "100", "-o", tmp_path / "p.yaml")
    assert code == 3 and "server unavailable" in err and "127.0.0.1:9/v1/models" in err
    code, _, err = run(capsys, "profile", "measure", "--endpoint", "http://127.0.0.1:9", "--model", "llama-3-8b",
                       "--gpu", "l4", "--tpot-ms", "100", "--min-requests", "50", "--max-requests", "10")
    assert code == 2 and "--min-requests" in err


def test_estimate_reuses_constants_from_a_fitted_profile(tmp_path, capsys):
    fitted = tmp_path / "fitted.yaml"
    code, _, _ = run(capsys, "profile", "estimate", "--model", "llama-2-7b", "--gpu", "a10g", "--tpot-ms", "120",
                     "-o", fitted)
    profile = yaml.safe_load(fitted.read_text())
    profile["provenance"]["constants"]["bandwidth_efficiency"] = 0.4  # as if a --fit run had found a slow GPU
    fitted.write_text(yaml.safe_dump(profile))
    code, out, _ = run(capsys, "profile", "estimate", "--model", "llama-2-7b", "--gpu", "a10g", "--tpot-ms", "120",
                       "--constants", fitted)
    slower = yaml.safe_load(out)
    assert code == 0 and slower["provenance"]["constants"]["bandwidth_efficiency"] == 0.4
    assert slower["max_rps"][0][0] < profile["max_rps"][0][0]
    (tmp_path / "bad.yaml").write_text("constants: {bandwidth_efficiency: fast}\n")
    code, _, err = run(capsys, "profile", "estimate", "--model", "llama-2-7b", "--gpu", "a10g", "--tpot-ms", "120",
                       "--constants", tmp_path / "bad.yaml")
    assert code == 2 and "constants.bandwidth_efficiency" in err
