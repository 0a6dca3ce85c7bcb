"""`melange plan` (operator/plan_command.py), run through the `melange` entry point as users run it.

Expected mixes come from the Mélange paper's Table 3 (Arena, Llama-2-7B, 120 ms mean TPOT, paper mode):
1 x L4 + 1 x A100 at 4 req/s, 1 x L4 + 1 x A10G at 1 req/s; expected refusals from the recorded API
server messages (tests/operator/core/test_admission.py) and from the operator's spec reader as the
operator reports it (tests/cluster/test_plan.py compares both on a real cluster).
"""
from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from ..conftest import ROOT
from ..solver.cli.run_cli import run
from .core.test_admission import REFUSED, good_manifest
from .test_crd import _break

ARENA = ROOT / "examples" / "operator" / "arena-llama2-7b.yaml"
LLAMA3 = ROOT / "examples" / "operator" / "llama-3-8b.yaml"
ARENA_BUNDLE = ROOT / "examples" / "arena-llama2-7b" / "bundle.yaml"


def write(tmp_path, manifest: dict, name: str = "service.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def rows(table: str) -> dict[str, list[str]]:
    """The option rows and the mix row of a `melange solve`/`plan` table, by first column."""
    lines = table.splitlines()
    rules = [k for k, line in enumerate(lines) if set(line) == {"-"}]
    body = lines[rules[0] + 1:rules[1]] + [lines[rules[1] + 1]]
    return {line.split()[0]: line.split()[1:] for line in body}


def test_the_arena_example_plans_the_papers_table_3_mix_in_the_table_of_melange_solve(capsys):
    code, out, err = run(capsys, "plan", ARENA)
    assert (code, err) == (0, "")
    planned = rows(out)
    assert {name: int(row[0]) for name, row in planned.items()} == {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0,
                                                                    "mix": 2}
    assert planned["mix"][2] == "4.370"
    # the same problem as the solver's bundle of the example: the same table, row for row
    code, solved, _ = run(capsys, "solve", ARENA_BUNDLE)
    assert code == 0
    assert planned == rows(solved)
    assert out.splitlines()[0].startswith("Mélange allocation, paper mode, rate 4 req/s")
    assert "rate 4 req/s given in spec.workload.static.rate" in out.splitlines()[1]
    assert re.search(r"LLMService default/llama2-arena, apply mode: the operator would apply 3 Deployment, "
                     r"3 Service, 3 PodDisruptionBudget, 2 ConfigMap, 1 ServiceAccount, 1 Role, 1 RoleBinding", out), out


def test_rate_replaces_the_static_rate(capsys):
    code, out, _ = run(capsys, "plan", ARENA, "--rate", "1")
    assert code == 0
    assert {name: int(row[0]) for name, row in rows(out).items()} == {"l4": 1, "a10g": 1, "a100-80gb": 0, "h100": 0,
                                                                      "mix": 2}
    assert "rate 1 req/s given by --rate" in out.splitlines()[1]


def test_json_is_only_json_with_the_allocation_status_and_objects(capsys):
    code, out, _ = run(capsys, "plan", ARENA, "-o", "json")
    assert code == 0
    document = json.loads(out)
    assert document["allocation"] == {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}
    assert document["costPerHour"] == pytest.approx(0.7 + 3.67)
    assert document["service"] == {"name": "llama2-arena", "namespace": "default"}
    assert document["status"]["bestSingleType"] == {"name": "a10g", "costPerHour": 5.05}
    assert document["solve"]["replicas"] == document["allocation"]
    named = {(o["kind"], o["name"]) for o in document["objects"]}
    assert {("Deployment", "llama2-arena-l4"), ("Deployment", "llama2-arena-a100-80gb"),
            ("Deployment", "llama2-arena-router"), ("Service", "llama2-arena"),
            ("ConfigMap", "llama2-arena-routing")} <= named
    assert not any(name.endswith(("-a10g", "-h100")) for _, name in named)


def test_yaml_is_a_stream_of_every_object_without_owner_references(capsys):
    code, out, _ = run(capsys, "plan", LLAMA3, "-o", "yaml")
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    assert all(o["apiVersion"] and o["kind"] and o["metadata"]["name"] for o in objects)
    assert not any("ownerReferences" in o["metadata"] for o in objects)
    code, listed, _ = run(capsys, "plan", LLAMA3, "-o", "json")
    document = json.loads(listed)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [(o["kind"], o["name"]) for o in
                                                                     document["objects"]]
    pools = {o["metadata"]["labels"]["melange.ai/option"]: o["spec"]["replicas"] for o in objects
             if o["kind"] == "Deployment" and "melange.ai/option" in o["metadata"]["labels"]}
    assert pools == {name: n for name, n in document["allocation"].items() if n}
    assert all(o["metadata"].get("namespace") == "default" for o in objects if o["kind"] != "NodePool")


def test_karpenter_node_pools_are_planned(tmp_path, capsys):
    manifest = yaml.safe_load(ARENA.read_text())
    manifest["spec"]["nodePools"] = {"provider": "karpenter",
                                     "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                                      "name": "default"}}
    code, out, _ = run(capsys, "plan", write(tmp_path, manifest), "-o", "yaml")
    assert code == 0
    pools = [o for o in yaml.safe_load_all(out) if o["kind"] == "NodePool"]
    assert len(pools) == 2 and all(o["apiVersion"] == "karpenter.sh/v1" for o in pools)


def test_recommend_mode_writes_no_object(tmp_path, capsys):
    manifest = yaml.safe_load(ARENA.read_text())
    manifest["spec"]["mode"] = "recommend"
    path = write(tmp_path, manifest)
    code, out, _ = run(capsys, "plan", path)
    assert code == 0 and "writes this allocation into status only (recommend mode), no object" in out
    code, out, _ = run(capsys, "plan", path, "-o", "yaml")
    assert code == 0 and list(yaml.safe_load_all(out)) == []


@pytest.mark.parametrize("path,value,message", REFUSED, ids=[f"{p}={v!r}" for p, v, _ in REFUSED])
def test_a_manifest_the_api_server_refuses_is_one_line_with_its_message_exit_2(tmp_path, capsys, path, value,
                                                                                 message):
    file = write(tmp_path, _break(good_manifest(), path, value))
    code, out, err = run(capsys, "plan", file)
    assert (code, out, err) == (2, "", f"melange: error: {file}: {message}\n")


# What the operator's spec reader (not the API server) refuses, in the words the operator writes into the
# InvalidSpec condition (tests/cluster/test_plan.py reads them from the real operator).
OPERATOR_REFUSED = [
    ("spec.gpuOptions.0.gpu", "l5", "spec.gpuOptions[0].gpu: unknown GPU 'l5' (allowed: A100-40GB, A100-80GB, A10G, "
                                    "B200, H100-PCIe, H100-SXM, H200, L4, L40S, MI300X, T4)"),
    ("spec.workload.static.distribution", [[0.3, 0.2, 0.02], [0.15, 0.15, 0.03], [0.05, 0.07, 0.23]],
     "spec.workload.static.distribution: shares sum to 1.2 (allowed: a sum of 1 within 0.001)"),
    ("spec.workload.static.distribution", [[0.5, 0.5], [0, 0], [0, 0]],
     "spec.workload.static.distribution[0]: has 2 entries, expected 3"),
    ("spec.gpuOptions.2.profile", {"configMapRef": {"name": "profiles", "key": "a100.yaml"}},
     "spec.gpuOptions[2].profile.configMapRef: ConfigMap 'profiles' has no key 'a100.yaml' (or does not exist) "
     "(allowed: an existing ConfigMap and key in the service's namespace)"),
    ("spec.catalogModel", "llama-9", "spec.catalogModel: unknown model 'llama-9' (allowed: llama-2-7b, llama-3-70b, "
                                     "llama-3-8b, mistral-7b, mixtral-8x7b, qwen2.5-72b, qwen2.5-7b, or a Hugging "
                                     "Face config.json path)"),
    ("spec.serving.args", ["--disable-log-stats"],
     "spec.serving.args[0]: --disable-log-stats turns off the metrics the operator reads (allowed: leave it out)"),
]


@pytest.mark.parametrize("path,value,message", OPERATOR_REFUSED, ids=[f"{p}={v!r}"[:60] for p, v, _ in OPERATOR_REFUSED])
def test_a_spec_the_operator_refuses_is_one_line_with_its_message_exit_2(tmp_path, capsys, path, value, message):
    file = write(tmp_path, _break(yaml.safe_load(LLAMA3.read_text()), path, value))
    code, out, err = run(capsys, "plan", file)
    assert (code, out, err) == (2, "", f"melange: error: {file}: {message}\n")


def test_a_referenced_configmap_is_given_as_a_file_or_a_configmap_manifest(tmp_path, capsys):
    manifest = yaml.safe_load(ARENA.read_text())
    a100 = manifest["spec"]["gpuOptions"][2]
    profile = a100["profile"]["inline"]
    a100["profile"] = {"configMapRef": {"name": "measured-profiles", "key": "a100.yaml"}}
    service = write(tmp_path, manifest)
    (tmp_path / "a100.yaml").write_text(yaml.safe_dump(profile))
    code, out, err = run(capsys, "plan", service, "--configmap", f"measured-profiles={tmp_path / 'a100.yaml'}",
                         "-o", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["allocation"] == {"l4": 1, "a10g": 0, "a100-80gb": 1, "h100": 0}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "measured-profiles"},
                  "data": {"a100.yaml": yaml.safe_dump(profile)}}
    code, out, _ = run(capsys, "plan", service, "--configmap", f"measured-profiles={write(tmp_path, config_map, 'cm.yaml')}",
                       "-o", "json")
    assert code == 0 and json.loads(out)["allocation"]["a100-80gb"] == 1
    code, _, err = run(capsys, "plan", service, "--configmap", f"other={write(tmp_path, config_map, 'cm.yaml')}")
    assert code == 2 and "'measured-profiles', but --configmap names it 'other'" in err


def test_a_trace_configmap_sets_the_mix(tmp_path, capsys):
    manifest = yaml.safe_load(LLAMA3.read_text())
    manifest["spec"]["workload"]["static"] = {"rate": 2, "traceConfigMapRef": {"name": "traffic", "key": "trace.csv"}}
    (tmp_path / "trace.csv").write_text("input_tokens,output_tokens\n" + "3000,1500\n" * 10)
    code, out, err = run(capsys, "plan", write(tmp_path, manifest), "--configmap", f"traffic={tmp_path / 'trace.csv'}",
                         "-o", "json")
    assert (code, err) == (0, "")
    # every request in the grid's last bucket: the same plan as that distribution
    manifest["spec"]["workload"]["static"] = {"rate": 2, "distribution": [[0, 0, 0], [0, 0, 0], [0, 0, 1]]}
    _, by_distribution, _ = run(capsys, "plan", write(tmp_path, manifest, "distribution.yaml"), "-o", "json")
    assert json.loads(out)["allocation"] == json.loads(by_distribution)["allocation"]
    assert json.loads(out)["allocation"]["l4"] == 0


def live(**workload) -> dict:
    manifest = yaml.safe_load(LLAMA3.read_text())
    manifest["spec"]["workload"] = {"source": "prometheus", "grid": manifest["spec"]["workload"]["grid"], **workload}
    return manifest


def test_a_live_service_needs_rate_and_names_the_flag(tmp_path, capsys):
    code, out, err = run(capsys, "plan", write(tmp_path, live()))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "spec.workload.source: prometheus" in err and "--rate R" in err


def test_a_live_service_without_a_static_mix_names_where_to_put_one(tmp_path, capsys):
    code, _, err = run(capsys, "plan", write(tmp_path, live()), "--rate", "3")
    assert code == 2 and err.count("\n") == 1 and "spec.workload.static: missing" in err


def test_a_live_service_plans_rate_with_the_static_mix(tmp_path, capsys):
    static = yaml.safe_load(LLAMA3.read_text())["spec"]["workload"]["static"]
    code, out, _ = run(capsys, "plan", write(tmp_path, live(static=static)), "--rate", "6", "-o", "json")
    assert code == 0
    document = json.loads(out)
    # the same allocation as the static example at the same rate and mix
    _, static_out, _ = run(capsys, "plan", LLAMA3, "-o", "json")
    assert document["allocation"] == json.loads(static_out)["allocation"]
    assert document["status"]["workload"] == {"rate": 6.0, "source": "prometheus"}
    assert document["solve"]["rate_source"] == "given by --rate"


@pytest.mark.parametrize("manifest,message", [
    ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}},
     "not an LLMService manifest (apiVersion 'apps/v1', kind 'Deployment')"),
    ([1, 2], "not an LLMService manifest (a list)"),
])
def test_other_documents_are_refused(tmp_path, capsys, manifest, message):
    file = write(tmp_path, manifest)
    code, _, err = run(capsys, "plan", file)
    assert code == 2 and err.startswith(f"melange: error: {file}: {message}")


@pytest.mark.parametrize("flags,message", [
    (["--rate", "-1"], "--rate"),
    (["--configmap", "nofile"], "--configmap: 'nofile' is not NAME=FILE"),
    (["--configmap", "x=/nonexistent/file"], "/nonexistent/file"),
])
def test_bad_flags_are_one_line_exit_2(capsys, flags, message):
    code, out, err = run(capsys, "plan", ARENA, *flags)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_an_unknown_output_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        run(capsys, "plan", ARENA, "-o", "xml")
    assert exited.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err


def test_the_manifest_itself_is_not_changed(tmp_path, capsys):
    manifest = yaml.safe_load(ARENA.read_text())
    before = copy.deepcopy(manifest)
    file = write(tmp_path, manifest)
    text = file.read_text()
    assert run(capsys, "plan", file, "--rate", "2")[0] == 0
    assert file.read_text() == text and yaml.safe_load(text) == before


def test_help_lists_plan(capsys):
    from melange.solver.cli.main import main
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "plan" in capsys.readouterr().out


def test_without_the_plan_extra_it_says_what_to_install(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "celpy" else real(name, *a))
    code, out, err = run(capsys, "plan", ARENA)
    assert (code, out) == (2, "")
    assert err == "melange: error: melange plan: cel-python not installed (allowed: pip install -e '.[plan]')\n"


def test_without_the_packaged_crd_it_says_so(monkeypatch, tmp_path, capsys):
    from melange.operator import plan_command
    monkeypatch.setattr(plan_command, "CRD_FILE", tmp_path / "crds" / "llmservice.yaml")
    code, _, err = run(capsys, "plan", ARENA)
    assert code == 2 and err.count("\n") == 1 and f"the LLMService CRD is not at {tmp_path}" in err
