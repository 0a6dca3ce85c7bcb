from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .run_cli import run

from ...conftest import EXAMPLES

ARENA = EXAMPLES / "arena-llama2-7b"


def test_table_output(capsys):
    code, out, _ = run(capsys, "solve", ARENA / "bundle.yaml")
    assert code == 0
    assert "mix" in out and "vs best single type" in out and "routable mode" in out


def test_json_output_is_only_json(capsys):
    code, out, _ = run(capsys, "solve", ARENA / "bundle.yaml", "--rate", "1", "--output", "json")
    assert code == 0
    document = json.loads(out)
    assert document["status"] == "optimal"
    assert document["replicas"] == {"l4": 1, "a10g": 1, "a100-80gb": 0, "h100": 0}
    assert document["cost_per_hour"] == pytest.approx(1.71)
    assert document["single_type"]["h100"] == pytest.approx(7.516)


def test_separate_files_and_flags(capsys):
    code, out, _ = run(capsys, "solve", "--workload", ARENA / "workload.yaml", "--options", ARENA / "options.yaml",
                       "--profiles", *sorted((ARENA / "profiles").glob("*.yaml")), "--mode", "routable",
                       "--target-utilisation", "0.8", "--output", "json")
    document = json.loads(out)
    assert code == 0 and document["mode"] == "routable"
    for option in document["options"]:
        if option["replicas"]:
            assert option["utilisation"] <= 0.8 + 1e-6


def test_console_script_keeps_stdout_clean_with_highs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "melange.solver.cli", "solve", str(ARENA / "bundle.yaml"),
                             "--output", "json", "--solver", "highs"], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["status"] == "optimal"


def test_reference_json_accepted_unchanged(tmp_path, capsys):
    path = tmp_path / "example.json"
    path.write_text(json.dumps({"gpu_info": {"g0": {"cost": 0.86, "tputs": [[7.6], [0.41]]},
                                             "g1": {"cost": 4.88, "tputs": [[0.49], [2.56]]}},
                                "workload_distribution": [[0.6078424999887332], [0.392157500011267]],
                                "total_request_rate": 20, "slice_factor": 2}))
    for solver in ("highs", "cbc"):
        code, out, _ = run(capsys, "solve", path, "--output", "json", "--solver", solver)
        document = json.loads(out)
        assert code == 0 and document["cost_per_hour"] == pytest.approx(18.06)
        assert document["replicas"] == {"g0": 21, "g1": 0}


def bad_reference(tmp_path, **changes):
    data = {"gpu_info": {"A": {"cost": 1.0, "tputs": [[1.0, 1.0]]}}, "workload_distribution": [[0.5, 0.5]],
            "total_request_rate": 1.0, "slice_factor": 1}
    data.update(changes)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(data).replace('"NaN"', "NaN"))
    return path


@pytest.mark.parametrize("changes,message", [
    ({"gpu_info": {"A": {"cost": 1.0, "tputs": [[1.0, 0]]}}}, "no GPU option can serve these buckets: in#0 out#1"),
    ({"total_request_rate": -3}, "rate: must be >= 0"),
    ({"total_request_rate": "NaN"}, "rate: must be a finite number"),
    ({"workload_distribution": []}, "workload_distribution: must not be empty"),
    ({"workload_distribution": [[0.5, 0.5], [0.5]]}, "workload_distribution[1]: has 1 entries"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, changes, message):
    code, out, err = run(capsys, "solve", bad_reference(tmp_path, **changes), "--output", "json")
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_solver_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "melange.solver.cli", "solve", str(ARENA / "bundle.yaml"),
                             "--solver", "glpk"], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'glpk'" in result.stderr


@pytest.mark.parametrize("flags,message", [
    (["--rate", "nan"], "--rate: must be a finite number"),
    (["--rate", "-1"], "--rate: must be >= 0"),
    (["--slice-factor", "0"], "--slice-factor: got 0"),
    (["--target-utilisation", "1.5"], "--target-utilisation: got 1.5"),
    (["--min-replicas", "-1"], "--min-replicas: got -1"),
    (["--current", "l4", "--move-cost", "1"], "--current: cannot read 'l4'"),
])
def test_bad_flags(capsys, flags, message):
    code, out, err = run(capsys, "solve", ARENA / "bundle.yaml", *flags)
    assert code == 2 and message in err and out == ""


def test_infeasible_quota_is_reported(tmp_path, capsys):
    data = yaml.safe_load((ARENA / "bundle.yaml").read_text())
    data["profiles"] = [str(ARENA / p) for p in data["profiles"]]
    for option in data["options"]:
        option["max_replicas"] = 0
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "solve", path)
    assert code == 2 and "infeasible" in err
    assert "quotas (l4 <= 0, a10g <= 0, a100-80gb <= 0, h100 <= 0)" in err and "time limit" not in err


def test_a_rate_no_solver_can_count_to_blames_no_quota_or_time_limit(capsys):
    """1e12 req/s with no quota, spot share or time limit set: none of them is to blame; the answer
    says what happened instead (the solver's numbers give out)."""
    code, out, err = run(capsys, "solve", ARENA / "bundle.yaml", "--rate", "1e12")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "quota" not in err.split("no quota")[0] and "no quota, spot share or time limit is set" in err, err
    assert "1e+12 req/s" in err


CATALOG = ("--model", "llama-3-8b", "--workload", ARENA / "workload.yaml", "--rate", "2")


@pytest.mark.parametrize("typed, current", [("h100,l4", "h100=1"), ("H100,l4", "H100-SXM=1"),
                                            ("h100:2,l4", "h100:2=1"), ("h100:2,l4", "h100-x2=1")])
def test_a_catalog_option_takes_any_of_its_gpus_names_in_every_per_gpu_flag(capsys, typed, current):
    """The option has one name (the catalog's, h100-sxm; h100-sxm-x2 for two GPUs a replica) and every
    flag that names an option or a GPU accepts the catalog's aliases for it."""
    canonical = "h100-sxm" + ("-x2" if ":2" in typed else "")
    code, out, err = run(capsys, "solve", *CATALOG, "--gpus", typed, "--current", current, "--move-cost", "0.5",
                         "--price", "h100=5", "--output", "json")
    assert code == 0, err
    by_alias = json.loads(out)
    code, out, err = run(capsys, "solve", *CATALOG, "--gpus", typed.replace("H100", "h100"), "--current",
                         f"{canonical}=1", "--move-cost", "0.5", "--price", "h100-sxm=5", "--output", "json")
    assert code == 0, err
    by_name = json.loads(out)
    assert [o["name"] for o in by_alias["options"]] == [canonical, "l4"]
    assert by_alias["moves"] == by_name["moves"]
    assert by_alias["moves"].get(canonical, 0) == by_alias["replicas"][canonical] - 1  # --current was read as 1
    assert by_alias["single_type"] == by_name["single_type"]


def test_an_unknown_current_option_lists_the_names_it_takes(capsys):
    code, out, err = run(capsys, "solve", *CATALOG, "--gpus", "h100,l4", "--current", "a10g=1", "--move-cost", "1")
    assert code == 2 and out == ""
    assert "--current: 'a10g' is not one of the options" in err and "h100-sxm (also h100)" in err, err


def test_missing_inputs(capsys):
    code, _, err = run(capsys, "solve", "--options", ARENA / "options.yaml")
    assert code == 2 and "missing --workload, --trace or --prometheus" in err


def test_the_answer_states_model_slo_and_rate_source(capsys, tmp_path):
    code, out, _ = run(capsys, "solve", ARENA / "bundle.yaml")
    assert code == 0
    assert out.splitlines()[1] == (f"model llama-2-7b; SLO mean TPOT <= 120 ms; rate 4 req/s given in "
                                   f"{ARENA / 'bundle.yaml'}.workload.rate")
    code, out, _ = run(capsys, "solve", ARENA / "bundle.yaml", "--rate", "2", "--output", "json")
    document = json.loads(out)
    assert (document["model"], document["slo"], document["rate"], document["rate_source"]) == \
        ("llama-2-7b", {"tpot_ms": 120.0, "ttft_ms": None}, 2.0, "given by --rate")
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,input_tokens,output_tokens\n0,20,20\n1,30,30\n4,40,40\n")
    code, out, _ = run(capsys, "solve", "--model", "llama-3-8b", "--gpus", "l4", "--trace", trace, "--output", "json")
    document = json.loads(out)
    assert document["slo"] == {"tpot_ms": 120.0, "ttft_ms": None} and document["model"] == "llama-3-8b"
    assert document["rate"] == pytest.approx(0.5)
    assert document["rate_source"] == f"from the timestamps of {trace} (3 requests over 4 s)"


def test_move_cost_is_shown_apart_with_the_moves(capsys):
    """Keeping one H100 (current) costs $7.516/h; moving to the $4.370/h mix adds 2 and removes 1
    replica: 3 x $5 = $15/h of moves, so the solve keeps the H100 and the mix costs more than the
    best single type (5 A10G, $5.05/h), which pays no move cost."""
    code, out, _ = run(capsys, "solve", ARENA / "bundle.yaml", "--current", "h100=1", "--move-cost", "5")
    assert code == 0
    assert "moves vs --current: none; move cost $0.000/h" in out
    assert "saves -48.83%" in out and "why the mix costs more: single-type baselines pay no move cost" in out
    code, out, _ = run(capsys, "solve", ARENA / "bundle.yaml", "--current", "h100=1", "--move-cost", "0.5",
                       "--output", "json")
    document = json.loads(out)
    assert document["moves"] == {"l4": 1, "a100-80gb": 1, "h100": -1}
    assert document["move_cost_per_hour"] == pytest.approx(1.5) and document["cost_per_hour"] == pytest.approx(4.37)


def test_floors_that_single_types_do_not_keep_are_given_as_the_reason(capsys, tmp_path):
    """With an H100 floor the kept H100 serves all 4 req/s alone, so the mix is 1 H100 at $7.516/h,
    against 5 A10G at $5.05/h that keep no H100: (5.05 - 7.516) / 5.05 = -48.83%."""
    data = yaml.safe_load((ARENA / "bundle.yaml").read_text())
    data["profiles"] = [str(ARENA / p) for p in data["profiles"]]
    data["options"][3]["min_replicas"] = 1
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, _ = run(capsys, "solve", path)
    assert code == 0 and "saves -48.83%" in out
    assert "why the mix costs more: the mix keeps every option's floor (h100 x1); a single-type baseline keeps " \
           "only its own" in out


def test_an_options_file_can_buy_whole_nodes(tmp_path, capsys):
    """The Arena example at 4 req/s with each option bought in AWS instances (g6.xlarge 1 x L4 $0.8048,
    g5.xlarge 1 x A10G $1.006, p4de.24xlarge 8 x A100 $40.966, p5.48xlarge 8 x H100 $98.32): the paper's
    1 x L4 + 1 x A100 would cost $41.77/h in whole nodes; the answer is 1 x L4 + 4 x A10G,
    $0.8048 + 4 x $1.006 = $4.8288/h, and A100 alone (2 replicas) costs its one node."""
    options = yaml.safe_load((ARENA / "options.yaml").read_text())
    shapes = {"l4": (1, 0.8048), "a10g": (1, 1.006), "a100-80gb": (8, 40.966), "h100": (8, 98.32)}
    for option in options["options"]:
        option["gpus_per_node"], option["node_price_per_hour"] = shapes[option["name"]]
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(options))
    code, out, _ = run(capsys, "solve", "--workload", ARENA / "workload.yaml", "--options", tmp_path / "options.yaml",
                       "--profiles", *sorted((ARENA / "profiles").glob("*.yaml")), "--output", "json")
    document = json.loads(out)
    assert code == 0 and document["status"] == "optimal"
    assert document["replicas"] == {"l4": 1, "a10g": 4, "a100-80gb": 0, "h100": 0}
    assert document["cost_per_hour"] == pytest.approx(4.8288)
    assert document["single_type_replicas"]["a100-80gb"] == 2
    assert document["single_type"]["a100-80gb"] == pytest.approx(40.966)
    assert {o["name"]: o["nodes"] for o in document["options"]} == {"l4": 1, "a10g": 4, "a100-80gb": 0, "h100": 0}


def test_catalog_gpus_can_be_priced_by_the_instance(capsys, tmp_path):
    """--pricing node with catalog GPUs: an A100 replica costs a p4de.24xlarge; the table says so."""
    workload = tmp_path / "workload.yaml"
    workload.write_text(yaml.safe_dump({"rate": 0.5, "grid": {"input_edges": [1000], "output_edges": [500]},
                                        "distribution": [[1.0]]}))
    code, out, _ = run(capsys, "solve", "--model", "llama-3-8b", "--gpus", "a100", "--workload", workload,
                       "--pricing", "node", "--output", "json")
    document = json.loads(out)
    assert code == 0 and document["replicas"] == {"a100-80gb": 1}
    assert document["cost_per_hour"] == pytest.approx(40.966) and document["options"][0]["nodes"] == 1
    code, out, _ = run(capsys, "solve", "--model", "llama-3-8b", "--gpus", "a100", "--workload", workload,
                       "--pricing", "node")
    assert "bought as whole nodes: a100-80gb 1 x 8 GPUs at $40.966/h (7 GPUs idle)" in out
    code, _, err = run(capsys, "solve", "--model", "llama-3-8b", "--gpus", "h200", "--workload", workload,
                       "--pricing", "node")
    assert code == 2 and "--pricing" in err and "no instance type" in err


def test_a_correction_solves_as_the_profile_scaled_by_hand(tmp_path, capsys):
    """`--correction a100-80gb=0.8` gives what a copy of the A100 profile with every rate x 0.8 gives
    (the operator's status.profileCorrections, reproduced offline); the default mix moves off the A100."""
    profile = yaml.safe_load((ARENA / "profiles" / "a100-80gb.yaml").read_text())
    profile["max_rps"] = [[None if v is None else v * 0.8 for v in row] for row in profile["max_rps"]]
    (tmp_path / "a100-80gb.yaml").write_text(yaml.safe_dump(profile))
    others = [p for p in sorted((ARENA / "profiles").glob("*.yaml")) if p.name != "a100-80gb.yaml"]
    base = ["solve", "--workload", ARENA / "workload.yaml", "--options", ARENA / "options.yaml", "--output", "json"]
    code, out, _ = run(capsys, *base, "--profiles", *others, tmp_path / "a100-80gb.yaml")
    by_hand = json.loads(out)
    code2, out2, _ = run(capsys, *base, "--profiles", *sorted((ARENA / "profiles").glob("*.yaml")),
                         "--correction", "a100-80gb=0.8")
    corrected = json.loads(out2)
    assert code == code2 == 0
    replicas = lambda doc: {o["name"]: o["replicas"] for o in doc["options"]}  # noqa: E731
    assert replicas(corrected) == replicas(by_hand)
    assert corrected["cost_per_hour"] == pytest.approx(by_hand["cost_per_hour"])
    # The paper's 1 x L4 + 1 x A100 ($4.37/h) no longer holds: the A100 at 0.8 serves less than its share.
    assert replicas(corrected)["a100-80gb"] == 0 and corrected["cost_per_hour"] > 4.37


def test_a_correction_for_an_unknown_option_is_refused(capsys):
    code, _, err = run(capsys, "solve", ARENA / "bundle.yaml", "--correction", "tpu=0.8")
    assert code == 2 and "--correction" in err and "'tpu' is not one of the options" in err
    code, _, err = run(capsys, "solve", ARENA / "bundle.yaml", "--correction", "l4=0")
    assert code == 2 and "--correction l4" in err


@pytest.mark.parametrize("name", ["llama-3-8b.yaml", "arena-llama2-7b.yaml"])
def test_an_llmservice_manifest_points_to_melange_plan(capsys, name):
    manifest = EXAMPLES / "operator" / name
    code, out, err = run(capsys, "solve", manifest)
    assert (code, out) == (2, "")
    assert err == (f"melange: error: {manifest}: an LLMService manifest, not a solve bundle: use melange plan "
                   f"{manifest}, which checks and solves it as the operator would\n")
