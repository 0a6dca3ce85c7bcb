"""`melange plan` against the real thing: the API server refuses the same manifests with the same
message, the operator refuses the same specs with the same InvalidSpec message, and for each example
the operator deploys the allocation and the objects that `melange plan` printed without a cluster."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ..operator.core.test_admission import REFUSED, good_manifest
from ..operator.test_crd import _break
from ..operator.test_plan_command import OPERATOR_REFUSED
from ..solver.cli.run_cli import run
from .conftest import EXAMPLES_DIR, condition, example, llmservice, settled, wait_until

pytestmark = pytest.mark.cluster

# Every kind the operator writes for a service without node pools (the cluster serves PodMonitors).
OWNED_KINDS = "deployments,services,configmaps,poddisruptionbudgets,serviceaccounts,roles,rolebindings,podmonitors"


def server_errors(stderr: str) -> list[str]:
    """The field errors of a refusal by kubectl: `The LLMService "x" is invalid: <error>` or a `* <error>`
    line each, less the server's note that CEL rules were skipped; a strict decoding error whole."""
    if "strict decoding error: " in stderr:
        return ["strict decoding error: " + stderr.split("strict decoding error: ", 1)[1].strip()]
    rest = stderr.partition(" is invalid: ")[2]
    lines = [line[2:] for line in rest.splitlines() if line.startswith("* ")] or [rest.strip()]
    return [line for line in lines if not line.startswith("<nil>: ")]


def plan(capsys, path: Path, *flags: str) -> tuple[int, str, str]:
    return run(capsys, "plan", path, *flags)


@pytest.mark.parametrize("path,value,recorded", REFUSED, ids=[f"{p}={v!r}" for p, v, _ in REFUSED])
def test_the_api_server_and_melange_plan_refuse_a_bad_manifest_with_the_same_message(cluster, release, tmp_path,
                                                                                        capsys, path, value, recorded):
    broken = _break(good_manifest(), path, value)
    file = tmp_path / "service.yaml"
    file.write_text(yaml.safe_dump(broken))
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(file), check=False)
    assert result.returncode != 0, f"the server accepted {path}={value!r}"
    server = server_errors(result.stderr)
    code, out, err = plan(capsys, file)
    assert (code, out) == (2, "")
    assert err == f"melange: error: {file}: {server[0]}\n"
    assert server[0] == recorded  # the recorded table of the unit tests is still what the server says


@pytest.mark.parametrize("file", sorted(EXAMPLES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_the_api_server_fills_in_the_defaults_melange_plan_does(cluster, release, file):
    from melange.operator.core.admission import admission_errors
    from ..operator.schema import crd
    stored = json.loads(cluster.kubectl("apply", "--dry-run=server", "-f", str(file), "-o", "json").stdout)
    errors, ours = admission_errors(yaml.safe_load(file.read_text()), crd())
    assert errors == [] and ours["spec"] == stored["spec"]


@pytest.mark.parametrize("path,value,message", OPERATOR_REFUSED, ids=[f"{p}={v!r}"[:60] for p, v, _ in OPERATOR_REFUSED])
def test_the_operator_and_melange_plan_refuse_a_bad_spec_with_the_same_message(cluster, operator, namespace, tmp_path,
                                                                                 capsys, path, value, message):
    manifest = _break(example("llama-3-8b.yaml", namespace), path, value)
    name = manifest["metadata"]["name"]
    file = tmp_path / "service.yaml"
    file.write_text(yaml.safe_dump(manifest))
    cluster.apply(manifest)
    refused = wait_until(lambda: (s := llmservice(cluster, name, namespace)) and condition(s, "InvalidSpec") == "True"
                         and s, f"{name} InvalidSpec", timeout_s=60)
    reported = next(c["message"] for c in refused["status"]["conditions"] if c["type"] == "InvalidSpec")
    code, out, err = plan(capsys, file)
    assert (code, out) == (2, "")
    assert err == f"melange: error: {file}: {reported}\n"
    assert reported == message
    assert cluster.get("deployments", namespace=namespace)["items"] == []


def owned(cluster, namespace: str, name: str) -> dict[tuple[str, str], dict]:
    """Every object of the service in the namespace, by (kind, name)."""
    items = cluster.kubectl("get", OWNED_KINDS, "-n", namespace, "-l", f"melange.ai/service={name}", "-o", "json")
    return {(o["kind"], o["metadata"]["name"]): o for o in json.loads(items.stdout)["items"]}


@pytest.mark.parametrize("file", ["arena-llama2-7b.yaml", "llama-3-8b.yaml"])
def test_the_operator_deploys_what_melange_plan_printed(cluster, operator, namespace, tmp_path, capsys, file):
    manifest = example(file, namespace)
    name = manifest["metadata"]["name"]
    path = tmp_path / file
    path.write_text(yaml.safe_dump(manifest))
    code, out, err = plan(capsys, path, "-o", "json", "--pod-monitor")
    assert (code, err) == (0, "")
    planned = json.loads(out)
    code, stream, _ = plan(capsys, path, "-o", "yaml", "--pod-monitor")
    objects = list(yaml.safe_load_all(stream))
    # every planned object is one the API server takes as it is (before the operator made any)
    cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=stream)

    cluster.apply(manifest)
    service = wait_until(lambda: (s := llmservice(cluster, name, namespace)) and condition(s, "Ready") == "True"
                         and not s["status"].get("move") and s, f"{name} Ready", timeout_s=120)
    assert service["status"]["allocation"] == planned["allocation"]
    wait_until(settled(cluster, name, namespace, planned["allocation"]), f"{name} on {planned['allocation']}")
    assert service["status"]["costPerHour"] == planned["costPerHour"]
    actual = owned(cluster, namespace, name)
    pools = {o["metadata"]["labels"]["melange.ai/option"]: o["spec"]["replicas"]
             for (kind, _), o in actual.items() if kind == "Deployment" and "melange.ai/option" in o["metadata"]["labels"]}
    assert pools == {option: n for option, n in planned["allocation"].items() if n}
    assert set(actual) == {(o["kind"], o["metadata"]["name"]) for o in objects}
    # rendered by the same planner: the pools' vLLM command lines, resources and placement are the operator's
    for obj in objects:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] != f"{name}-router":
            deployed = actual[("Deployment", obj["metadata"]["name"])]["spec"]["template"]["spec"]
            want = obj["spec"]["template"]["spec"]
            assert deployed["containers"][0]["args"] == want["containers"][0]["args"]
            assert deployed["containers"][0]["resources"] == want["containers"][0]["resources"]
            assert deployed.get("affinity") == want.get("affinity")
            assert (deployed.get("nodeSelector") or {}) == (want.get("nodeSelector") or {})  # the server drops {}
