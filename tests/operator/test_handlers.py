"""The real operator (kopf + the `kubernetes` client) against the emulated Kubernetes API over HTTP.

Expected mixes come from the Mélange paper's Table 3 (Arena, Llama-2-7B, 120 ms TPOT, paper mode):
1 req/s -> 1 x L4 + 1 x A10G ($1.71/h), 4 req/s -> 1 x L4 + 1 x A100 ($4.37/h).
"""
from __future__ import annotations

import asyncio
import base64
import copy
import json

import kopf
import pytest
import yaml

from melange.operator import handlers
from melange.operator.handlers import OperatorConfig
from melange.testing.kube_emulator import crd_manifest
from melange.testing.ports import free_port

from .conftest import LLMSERVICES
from .schema import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.looptime]
DEPLOYMENTS, SERVICES, CONFIGMAPS, NODEPOOLS = "apps/v1/deployments", "v1/services", "v1/configmaps", \
    "karpenter.sh/v1/nodepools"
ARENA = yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text())
OWNED = (DEPLOYMENTS, SERVICES, CONFIGMAPS, NODEPOOLS)
def arena(name: str = "llama2-arena", rate: float = 4.0, **spec_changes) -> dict:
    service = copy.deepcopy(ARENA)
    service["metadata"] = {"name": name, "namespace": "default"}
    service["spec"]["workload"]["static"]["rate"] = rate
    service["spec"].update(spec_changes)
    return service


def start(operator_runner, **options):
    return operator_runner(handlers, namespaces=["default"], memo=kopf.Memo(config=OperatorConfig()), **options)


def replicas(kube, prefix: str) -> dict[str, int]:
    """Deployment name -> spec.replicas for the service's vLLM pools."""
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in kube.objects(DEPLOYMENTS, "default")
            if d["metadata"]["name"].startswith(prefix + "-") and not d["metadata"]["name"].endswith("-router")}


def condition(service: dict, kind: str) -> dict:
    return next((c for c in (service.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


async def status_of(kube, name: str, predicate) -> dict:
    return await kube.wait_for(lambda: (lambda s: s if s and predicate(s) else None)(
        kube.object(LLMSERVICES, name, "default")), timeout_s=60)


async def test_create_deploys_the_papers_mix_with_router_and_routing_table(kube, operator_runner):
    async with start(operator_runner):
        await kube.create(arena())
        service = await status_of(kube, "llama2-arena", lambda s: (s.get("status") or {}).get("allocation"))
        assert replicas(kube, "llama2-arena") == {"llama2-arena-l4": 1, "llama2-arena-a100-80gb": 1}
        status = service["status"]
        assert status["costPerHour"] == 4.37 and status["allocation"]["a10g"] == 0
        assert status["bestSingleType"] == {"name": "a10g", "costPerHour": 5.05}
        names = {o["metadata"]["name"] for o in kube.objects(SERVICES, "default")}
        assert {"llama2-arena", "llama2-arena-l4", "llama2-arena-a100-80gb"} <= names
        table = json.loads(kube.object(CONFIGMAPS, "llama2-arena-routing", "default")["data"]["routing.json"])
        assert set(table["pools"]) == {"l4", "a100-80gb"}
        assert table["pools"]["l4"]["urls"] == ["http://llama2-arena-l4.default.svc:8000"]
        router = kube.object(DEPLOYMENTS, "llama2-arena-router", "default")
        assert router["metadata"]["ownerReferences"][0]["uid"] == service["metadata"]["uid"]
        events = await kube.wait_for(lambda: [e for e in kube.events("llama2-arena") if e["reason"] == "Reallocated"])
        assert "1 x l4 + 1 x a100-80gb ($4.37/h)" in events[0]["message"]
        assert condition(service, "Ready")["status"] == "False"
        for name in ("llama2-arena-l4", "llama2-arena-a100-80gb", "llama2-arena-router"):
            kube.mark_ready("default", name)
        ready = await status_of(kube, "llama2-arena", lambda s: condition(s, "Ready").get("status") == "True")
        assert condition(ready, "Solved")["status"] == "True"


async def test_an_idle_service_costs_no_handler_call_and_no_log_line(kube, operator_runner, caplog):
    """Between its passes a service's daemon sleeps: no handler runs (a timer ran one every second for
    every service, and kopf logged a line each time) and no API call is made."""
    caplog.set_level("INFO", logger="kopf.objects")
    async with start(operator_runner):
        await kube.create(arena(reallocation={"interval": "600s"}))
        await status_of(kube, "llama2-arena", lambda s: (s.get("status") or {}).get("allocation"))
        await asyncio.sleep(3.0)
        caplog.clear()
        calls = sum(kube.calls.values())
        await asyncio.sleep(30.0)
        assert sum(kube.calls.values()) == calls, kube.calls
        lines = [r.getMessage() for r in caplog.records if r.name == "kopf.objects"]
        assert lines == [], lines


async def test_a_new_rate_moves_to_the_new_mix_and_the_dropped_pool_goes(kube, operator_runner):
    kube.emulator.auto_ready = True  # the Deployment controller: ready replicas follow each write
    async with start(operator_runner):
        await kube.create(arena())
        await kube.wait_for(lambda: replicas(kube, "llama2-arena") == {"llama2-arena-l4": 1,
                                                                       "llama2-arena-a100-80gb": 1})
        await kube.patch(LLMSERVICES, "llama2-arena", {"spec": {"workload": {"static": {"rate": 1.0}}}},
                         namespace="default")
        # Make before break: the new pool comes up beside the old ones, the routing switches to it,
        # and after the drain the dropped pool is scaled to zero, then deleted with its Service.
        await kube.wait_for(lambda: replicas(kube, "llama2-arena") == {"llama2-arena-l4": 1, "llama2-arena-a10g": 1,
                                                                       "llama2-arena-a100-80gb": 1})
        table = lambda: json.loads(kube.object(CONFIGMAPS, "llama2-arena-routing", "default")["data"]["routing.json"])
        await kube.wait_for(lambda: set(table()["pools"]) == {"l4", "a10g"}, timeout_s=60)
        await kube.wait_for(lambda: replicas(kube, "llama2-arena") == {"llama2-arena-l4": 1, "llama2-arena-a10g": 1},
                            timeout_s=600)
        await kube.wait_for(lambda: kube.object(SERVICES, "llama2-arena-a100-80gb", "default") is None, timeout_s=300)
        service = await status_of(kube, "llama2-arena", lambda s: (s.get("status") or {}).get("costPerHour") == 1.71)
        assert service["status"]["allocation"] == {"l4": 1, "a10g": 1, "a100-80gb": 0, "h100": 0}
        assert service["status"].get("move") is None and service["status"]["observedGeneration"] == 2
        await kube.wait_for(lambda: any("1 x l4 + 1 x a100-80gb ($4.37/h) -> 1 x l4 + 1 x a10g ($1.71/h)" in e["message"]
                                        for e in kube.events("llama2-arena") if e["reason"] == "Reallocated"))
        reasons = [e["reason"] for e in kube.events("llama2-arena")]
        assert reasons.count("MoveStarted") == 1 and reasons.count("MoveStep") == 3
        # A serving flag added to the spec reaches every pool (the Deployments are replaced).
        await kube.patch(LLMSERVICES, "llama2-arena", {"spec": {"serving": {"args": ["--enable-prefix-caching"]}}},
                         namespace="default")
        await kube.wait_for(lambda: all("--enable-prefix-caching" in d["spec"]["template"]["spec"]["containers"][0]["args"]
                                        for d in kube.objects(DEPLOYMENTS, "default") if "router" not in d["metadata"]["name"]))


async def test_recommend_mode_writes_status_and_events_only(kube, operator_runner):
    async with start(operator_runner):
        await kube.create(arena(mode="recommend"))
        service = await status_of(kube, "llama2-arena", lambda s: (s.get("status") or {}).get("costPerHour"))
        assert service["status"]["allocation"]["l4"] == 1
        await kube.wait_for(lambda: [e for e in kube.events("llama2-arena") if e["reason"] == "Recommended"])
        assert condition(service, "Ready")["reason"] == "NotApplied"
        for resource in (DEPLOYMENTS, SERVICES, CONFIGMAPS):
            assert [o for o in kube.objects(resource, "default") if o["metadata"]["name"].startswith("llama2")] == []


async def test_an_infeasible_slo_is_reported_and_creates_nothing(kube, operator_runner):
    service = arena()
    for option in service["spec"]["gpuOptions"]:
        option["profile"]["inline"]["max_rps"][5][5] = None
    async with start(operator_runner):
        await kube.create(service)
        found = await status_of(kube, "llama2-arena", lambda s: (s.get("status") or {}).get("conditions"))
        infeasible = condition(found, "Infeasible")
        assert infeasible["status"] == "True" and "in(1000,2000] out(1000,2000]" in infeasible["message"]
        assert replicas(kube, "llama2-arena") == {} and kube.objects(SERVICES, "default") == []
        await kube.wait_for(lambda: [e for e in kube.events("llama2-arena") if e["type"] == "Warning"])


async def test_an_invalid_edit_changes_nothing_and_names_the_field(kube, operator_runner):
    async with start(operator_runner):
        await kube.create(arena())
        await status_of(kube, "llama2-arena", lambda s: (s.get("status") or {}).get("allocation"))
        before = {r: kube.objects(r, "default") for r in (DEPLOYMENTS, SERVICES, CONFIGMAPS)}
        assert len(before[DEPLOYMENTS]) == 3 and len(before[SERVICES]) == 3
        await kube.patch(LLMSERVICES, "llama2-arena", [{"op": "replace", "path": "/spec/gpuOptions/0/gpu",
                                                        "value": "tpu-v9"},
                                                       {"op": "remove", "path": "/spec/gpuOptions/0/profile"},
                                                       {"op": "add", "path": "/spec/catalogModel",
                                                        "value": "llama-2-7b"}], namespace="default")
        found = await status_of(kube, "llama2-arena", lambda s: condition(s, "InvalidSpec").get("status") == "True")
        assert "spec.gpuOptions[0].gpu" in condition(found, "InvalidSpec")["message"]
        assert found["status"]["allocation"]["l4"] == 1 and found["status"]["costPerHour"] == 4.37  # last good kept
        assert {r: kube.objects(r, "default") for r in before} == before


async def test_karpenter_node_pools_follow_the_allocation_and_go_with_the_service(kube, operator_runner):
    await kube.create(crd_manifest("karpenter.sh", "v1", "nodepools", "NodePool", namespaced=False))
    service = arena(nodePools={"provider": "karpenter",
                               "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"}})

    def pools() -> dict[str, dict]:
        return {p["metadata"]["labels"]["melange.ai/option"]: p for p in kube.objects(NODEPOOLS)}
    async with start(operator_runner):
        await kube.create(service)
        found = await kube.wait_for(lambda: pools() if len(pools()) == 2 else None)
        # L4 on 1-GPU g6.xlarge; the A100-80GB only 8 per p4de.24xlarge: a whole instance for 1 replica.
        assert found["l4"]["spec"]["limits"] == {"nvidia.com/gpu": "1"}
        assert found["a100-80gb"]["spec"]["limits"] == {"nvidia.com/gpu": "8"}
        # At 8 req/s the same profiles need 1 x A10G + 2 x A100 (bench/reproduce_paper.py's rate-8 row).
        await kube.patch(LLMSERVICES, "llama2-arena", {"spec": {"workload": {"static": {"rate": 8.0}}}},
                         namespace="default")
        await kube.wait_for(lambda: "a10g" in pools())
        assert pools()["a100-80gb"]["spec"]["limits"] == {"nvidia.com/gpu": "8"}  # up to 2 replicas: one instance
        # Off Karpenter: the NodePools left behind go.
        await kube.patch(LLMSERVICES, "llama2-arena", {"spec": {"nodePools": {"provider": "none"}}},
                         namespace="default")
        await kube.wait_for(lambda: pools() == {})
        await kube.patch(LLMSERVICES, "llama2-arena", {"spec": {"nodePools": service["spec"]["nodePools"]}},
                         namespace="default")
        await kube.wait_for(lambda: len(pools()) == 2)
        await kube.delete(LLMSERVICES, "llama2-arena", namespace="default")
        await kube.wait_for(lambda: kube.objects(NODEPOOLS) == [] and kube.object(LLMSERVICES, "llama2-arena",
                                                                                    "default") is None)
        await kube.wait_for(lambda: replicas(kube, "llama2-arena") == {})


async def test_deleting_the_service_removes_what_it_owns(kube, operator_runner):
    async with start(operator_runner):
        await kube.create(arena())
        await kube.wait_for(lambda: kube.object(DEPLOYMENTS, "llama2-arena-router", "default"))
        await kube.delete(LLMSERVICES, "llama2-arena", namespace="default")
        await kube.wait_for(lambda: all(not o["metadata"]["name"].startswith("llama2-arena")
                                        for r in (DEPLOYMENTS, SERVICES, CONFIGMAPS) for o in kube.objects(r, "default")))
        assert kube.object(LLMSERVICES, "llama2-arena", "default") is None


async def test_unreachable_prometheus_keeps_everything_and_says_so(kube, operator_runner):
    """A live service whose Prometheus (with a token from a Secret) does not answer: no workload is not
    an idle workload; nothing is created and MetricsAvailable=False names the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    await kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prom", "namespace": "default"},
                       "data": {"token": base64.b64encode(b"s3cret").decode()}})
    service = arena("live")
    service["spec"]["workload"] = {"source": "prometheus", "grid": service["spec"]["workload"]["grid"],
                                   "prometheus": {"url": url, "window": "1m",
                                                  "bearerTokenSecretRef": {"name": "prom", "key": "token"}}}
    async with start(operator_runner):
        await kube.create(service)
        found = await status_of(kube, "live", lambda s: condition(s, "MetricsAvailable").get("status") == "False")
        assert url in condition(found, "MetricsAvailable")["message"]
        assert "allocation" not in found["status"] and replicas(kube, "live") == {}
        assert kube.calls.get(("get", "secrets"), 0) >= 1


def _owned(kube) -> dict:
    """Every owned object's content (not its status, which the Deployment controller writes)."""
    return {(obj["kind"], obj["metadata"]["name"]): {k: v for k, v in obj.items() if k != "status"}
            for _, obj in kube.emulator.live_objects()
            if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "melange-operator"}


async def test_a_restarted_operator_changes_nothing_that_is_right(kube, operator_runner):
    operator = await operator_runner.start(handlers, namespaces=["default"], memo=kopf.Memo(config=OperatorConfig()))
    await kube.create(arena())
    await status_of(kube, "llama2-arena", lambda s: (s.get("status") or {}).get("allocation"))
    await operator.stop()
    before = _owned(kube)
    operator = await operator_runner.start(handlers, namespaces=["default"], memo=kopf.Memo(config=OperatorConfig()))
    for name in ("llama2-arena-l4", "llama2-arena-a100-80gb", "llama2-arena-router"):
        kube.mark_ready("default", name)
    # The restarted operator has reconciled (it saw the pools ready) and changed no owned object.
    await status_of(kube, "llama2-arena", lambda s: condition(s, "Ready").get("status") == "True")
    after = _owned(kube)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key]["metadata"]["resourceVersion"] == before[key]["metadata"]["resourceVersion"] or \
            key[0] == "Deployment", key  # a Deployment's version moves with the status mark_ready wrote
        assert after[key]["metadata"].get("generation") == before[key]["metadata"].get("generation"), key
        assert after[key].get("spec") == before[key].get("spec") and after[key].get("data") == before[key].get("data")
    await operator.stop()


async def test_two_services_are_independent(kube, operator_runner):
    chat_b = arena("chat-b", rate=1.0)  # its L4 profile comes from a ConfigMap
    profile = chat_b["spec"]["gpuOptions"][0].pop("profile")["inline"]
    chat_b["spec"]["gpuOptions"][0]["profile"] = {"configMapRef": {"name": "profiles", "key": "l4.yaml"}}
    await kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "profiles", "namespace": "default"},
                       "data": {"l4.yaml": yaml.safe_dump(profile)}})
    async with start(operator_runner):
        await kube.create(arena("chat-a", rate=4.0))
        await kube.create(chat_b)
        await kube.wait_for(lambda: replicas(kube, "chat-a") == {"chat-a-l4": 1, "chat-a-a100-80gb": 1}
                            and replicas(kube, "chat-b") == {"chat-b-l4": 1, "chat-b-a10g": 1})
        await kube.patch(LLMSERVICES, "chat-b", {"spec": {"mode": "recommend"}}, namespace="default")
        await status_of(kube, "chat-b", lambda s: (s.get("status") or {}).get("observedGeneration") == 2)
        assert replicas(kube, "chat-a") == {"chat-a-l4": 1, "chat-a-a100-80gb": 1}


class _Served:
    """The one answer `_monitoring` asks the cluster for, counted."""

    def __init__(self, served: bool) -> None:
        self.served, self.asked = served, 0

    def serves_pod_monitors(self) -> bool:
        self.asked += 1
        return self.served


@pytest.mark.parametrize("mode, served, wanted, asks", [
    ("auto", True, True, 1), ("auto", False, False, 1),
    ("on", False, True, 0),  # on: always (the start refused a cluster without the CRD)
    ("off", True, False, 0),
])
async def test_each_pass_writes_a_pod_monitor_as_the_mode_and_the_cluster_say(mode, served, wanted, asks):
    settings = handlers.PodMonitorSettings((("release", "kps"),), "15s")
    cluster = _Served(served)
    config = OperatorConfig(pod_monitors=mode, pod_monitor=settings, cluster=cluster)
    assert handlers._monitoring(config) == (settings if wanted else None)
    assert cluster.asked == asks
