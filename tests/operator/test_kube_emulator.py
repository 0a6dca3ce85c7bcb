"""The operator's test harness, proven: each gap closed in kmock's emulator, checked over HTTP; then the
real kopf operator with a toy handler module (toy_handlers.py) against it, with looptime for timers."""
from __future__ import annotations

import asyncio
import json

import kopf
import kubernetes
import pytest

from melange.testing.kube_emulator import KubeEmulator

from . import toy_handlers
from .conftest import LLMSERVICES

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
DEPLOYMENTS, CONFIGMAPS = "apps/v1/deployments", "v1/configmaps"


def llmservice(name: str, replicas: int = 1) -> dict:
    return {"apiVersion": "melange.ai/v1alpha1", "kind": "LLMService", "metadata": {"name": name},
            "spec": {"replicas": replicas}}


def configmap(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


async def read_watch(kube, path: str, count: int, **params: str) -> list[dict]:
    """The first `count` events of a watch on `path` (fails after 5 s of loop time)."""
    events = []
    async with asyncio.timeout(5):
        async with kube.session.get(kube.url + path, params={"watch": "true", **params}) as response:
            async for line in response.content:
                events.append(json.loads(line))
                if len(events) == count:
                    return events
    return events


# ----- the emulator's gaps, closed -----

async def test_objects_get_uid_resource_version_and_a_generation_that_only_spec_changes_bump(kube):
    created = await kube.create(llmservice("a"), namespace="default")
    meta = created["metadata"]
    assert len(meta["uid"]) == 36 and meta["generation"] == 1 and meta["creationTimestamp"]
    spec_patched = await kube.patch(LLMSERVICES, "a", {"spec": {"replicas": 3}}, namespace="default")
    status_patched = await kube.patch(LLMSERVICES, "a", {"status": {"phase": "x"}}, namespace="default",
                                      subresource="status")
    label_patched = await kube.patch(LLMSERVICES, "a", {"metadata": {"labels": {"k": "v"}}}, namespace="default")
    versions = [int(o["metadata"]["resourceVersion"]) for o in (created, spec_patched, status_patched, label_patched)]
    assert versions == sorted(set(versions))  # every write: a new, higher version
    assert [o["metadata"]["generation"] for o in (spec_patched, status_patched, label_patched)] == [2, 2, 2]
    assert {o["metadata"]["uid"] for o in (spec_patched, status_patched, label_patched)} == {meta["uid"]}
    # With a status subresource, the main endpoint ignores status and /status ignores the rest.
    ignored = await kube.patch(LLMSERVICES, "a", {"status": {"phase": "y"}}, namespace="default")
    assert ignored["status"] == {"phase": "x"} and ignored["metadata"]["resourceVersion"] == str(versions[-1])
    status_only = await kube.patch(LLMSERVICES, "a", {"spec": {"replicas": 9}, "status": {"phase": "z"}},
                                   namespace="default", subresource="status")
    assert status_only["spec"] == {"replicas": 3} and status_only["status"] == {"phase": "z"}


async def test_a_watch_from_a_version_sends_what_changed_after_it_in_order(kube):
    first = await kube.create(configmap("one", k="1"), namespace="default")
    await kube.patch(CONFIGMAPS, "one", {"data": {"k": "2"}}, namespace="default")
    await kube.create(configmap("two"), namespace="default")
    await kube.delete(CONFIGMAPS, "one", namespace="default")
    events = await read_watch(kube, "/api/v1/namespaces/default/configmaps", 3,
                              resourceVersion=first["metadata"]["resourceVersion"])
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "one"), ("ADDED", "two"), ("DELETED", "one")]
    assert events[0]["object"]["data"] == {"k": "2"}
    # Without a version: what exists now, as ADDED (the history is not replayed), then live changes.
    watching = asyncio.ensure_future(read_watch(kube, "/api/v1/namespaces/default/configmaps", 2))
    await kube.create(configmap("three"), namespace="default")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in await watching] == [
        ("ADDED", "two"), ("ADDED", "three")]


async def test_a_write_landing_just_after_the_watch_snapshot_is_not_lost(kube, monkeypatch):
    """kmock takes its snapshot, then subscribes after an await: a write in between was lost. Here a
    write is started the moment the snapshot is taken; it must arrive, once."""
    take_snapshot = KubeEmulator._selected

    def snapshot_then_write(self, request):
        snapshot = take_snapshot(self, request)
        if request.params.get("watch"):
            asyncio.ensure_future(kube.create(configmap("raced"), namespace="default"))
        return snapshot
    monkeypatch.setattr(KubeEmulator, "_selected", snapshot_then_write)
    events = await read_watch(kube, "/api/v1/namespaces/default/configmaps", 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "raced")]


async def test_a_watch_from_a_version_not_kept_answers_410_gone(kube):
    events = await read_watch(kube, "/api/v1/namespaces/default/configmaps", 1, resourceVersion="not-a-version")
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


async def test_a_failed_json_patch_test_is_422_and_changes_nothing(kube):
    created = await kube.create(configmap("c", k="1"), namespace="default")
    path = f"{kube.url}/api/v1/namespaces/default/configmaps/c"
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
             {"op": "replace", "path": "/data/k", "value": "2"}]
    async with kube.session.patch(path, json=stale, headers={"Content-Type": "application/json-patch+json"}) as rsp:
        assert rsp.status == 422 and (await rsp.json())["reason"] == "Invalid"
    assert kube.object(CONFIGMAPS, "c", "default") == created
    fresh = [dict(stale[0], value=created["metadata"]["resourceVersion"]), stale[1]]
    assert (await kube.patch(CONFIGMAPS, "c", fresh, namespace="default"))["data"] == {"k": "2"}


async def test_a_stale_resource_version_in_a_put_is_a_409_conflict(kube):
    created = await kube.create(configmap("c", k="1"), namespace="default")
    await kube.patch(CONFIGMAPS, "c", {"data": {"k": "2"}}, namespace="default")
    async with kube.session.put(f"{kube.url}/api/v1/namespaces/default/configmaps/c", json=created) as rsp:
        assert rsp.status == 409


async def test_namespaces_list_and_get_and_version_answer(kube):
    await kube.create_namespace("ns1")
    names = [ns["metadata"]["name"] for ns in await kube.list("v1/namespaces")]
    assert names == ["default", "kube-system", "ns1"]
    assert (await kube.get("v1/namespaces", "ns1"))["metadata"]["uid"]
    for path in ("/version", "/version/"):
        async with kube.session.get(kube.url + path) as rsp:
            assert rsp.status == 200 and (await rsp.json())["major"] == "1"
    with pytest.raises(RuntimeError, match="404"):  # objects need their namespace, as in a real cluster
        await kube.create(configmap("c"), namespace="missing")


async def test_two_events_with_one_generate_name_get_two_names(kube):
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "svc."},
             "involvedObject": {"kind": "LLMService", "name": "svc"}, "reason": "R", "message": "m"}
    names = {(await kube.create(event, namespace="default"))["metadata"]["name"] for _ in range(2)}
    assert len(names) == 2 and all(n.startswith("svc.") and len(n) == 9 for n in names)


async def test_a_created_crd_is_discoverable_with_its_status_subresource_and_serves_objects(kube):
    async with kube.session.get(f"{kube.url}/apis/melange.ai/v1alpha1") as rsp:
        listed = {r["name"]: r for r in (await rsp.json())["resources"]}
    assert set(listed) == {"llmservices", "llmservices/status"}
    assert listed["llmservices"]["kind"] == "LLMService" and listed["llmservices"]["namespaced"] is True
    async with kube.session.get(f"{kube.url}/apis") as rsp:
        assert "melange.ai" in {g["name"] for g in (await rsp.json())["groups"]}
    crd = kube.object("apiextensions.k8s.io/v1/customresourcedefinitions", "llmservices.melange.ai")
    assert {c["type"] for c in crd["status"]["conditions"]} == {"Established", "NamesAccepted"}
    await kube.create(llmservice("a"), namespace="default")
    await kube.delete("apiextensions.k8s.io/v1/customresourcedefinitions", "llmservices.melange.ai")
    async with kube.session.get(f"{kube.url}/apis/melange.ai/v1alpha1/namespaces/default/llmservices") as rsp:
        assert rsp.status == 404
    assert kube.objects(LLMSERVICES) == []


async def test_deleting_an_owner_deletes_its_dependents_unless_orphaned(kube):
    owner = await kube.create(configmap("owner"), namespace="default")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    child = dict(configmap("child"), metadata={"name": "child", "ownerReferences": [ref]})
    await kube.create(child, namespace="default")
    grandchild_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "child",
                      "uid": kube.object(CONFIGMAPS, "child", "default")["metadata"]["uid"]}
    await kube.create(dict(configmap("grandchild"), metadata={"name": "grandchild", "ownerReferences": [grandchild_ref]}),
                      namespace="default")
    await kube.create(configmap("bystander"), namespace="default")
    await kube.delete(CONFIGMAPS, "owner", namespace="default")
    assert [o["metadata"]["name"] for o in kube.objects(CONFIGMAPS, "default")] == ["bystander"]
    # Orphan: the dependent stays, without the reference.
    owner = await kube.create(configmap("owner"), namespace="default")
    await kube.create(dict(configmap("kept"), metadata={"name": "kept", "ownerReferences": [
        dict(ref, uid=owner["metadata"]["uid"])]}), namespace="default")
    await kube.delete(CONFIGMAPS, "owner", namespace="default", propagation="Orphan")
    assert kube.object(CONFIGMAPS, "kept", "default")["metadata"]["ownerReferences"] == []


async def test_a_dependent_created_after_its_owner_was_deleted_is_collected(kube):
    owner = await kube.create(configmap("owner"), namespace="default")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    await kube.delete(CONFIGMAPS, "owner", namespace="default")
    created = await kube.create(dict(configmap("late"), metadata={"name": "late", "ownerReferences": [ref]}),
                                namespace="default")
    assert created["metadata"]["name"] == "late"  # the create succeeds, as on a real server
    assert kube.object(CONFIGMAPS, "late", "default") is None  # then the garbage collector takes it


async def test_finalizers_hold_the_deletion_until_the_last_one_is_removed(kube):
    await kube.create(dict(configmap("f"), metadata={"name": "f", "finalizers": ["x/y"]}), namespace="default")
    marked = await kube.delete(CONFIGMAPS, "f", namespace="default")
    assert marked["metadata"]["deletionTimestamp"] and kube.object(CONFIGMAPS, "f", "default") is not None
    await kube.patch(CONFIGMAPS, "f", {"metadata": {"finalizers": None}}, namespace="default")
    assert kube.object(CONFIGMAPS, "f", "default") is None


async def test_mark_ready_and_auto_ready_play_the_deployment_controller(kube):
    await kube.create(toy_handlers.deployment(llmservice("x") | {"metadata": {"name": "x", "uid": "u"}}, "d",
                                              "default", 3), namespace="default")
    assert "status" not in kube.object(DEPLOYMENTS, "d", "default")
    kube.mark_ready("default", "d", ready=1)
    assert kube.object(DEPLOYMENTS, "d", "default")["status"] == {
        "observedGeneration": 1, "replicas": 3, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 3}
    kube.emulator.auto_ready = True
    await kube.patch(DEPLOYMENTS, "d", {"spec": {"replicas": 4}}, namespace="default")
    status = kube.object(DEPLOYMENTS, "d", "default")["status"]
    assert (status["readyReplicas"], status["observedGeneration"]) == (4, 2)
    async with kube.session.get(f"{kube.url}/apis/apps/v1/namespaces/default/deployments/d/scale") as rsp:
        assert (await rsp.json())["spec"] == {"replicas": 4}


async def test_label_and_field_selectors_filter_lists(kube):
    for name, tier in (("a", "gpu"), ("b", "cpu"), ("c", None)):
        labels = {"tier": tier} if tier else {}
        await kube.create(dict(configmap(name), metadata={"name": name, "labels": labels}), namespace="default")
    async def names(labels):
        return [o["metadata"]["name"] for o in await kube.list(CONFIGMAPS, "default", labels=labels)]
    assert await names("tier=gpu") == ["a"]
    assert await names("tier!=gpu") == ["b", "c"]
    assert await names("tier in (gpu, cpu)") == ["a", "b"]
    assert await names("!tier") == ["c"]
    assert await names("tier,tier notin (cpu)") == ["a"]
    # Equality selectors read an index of the labels: a relabelled, new or deleted object is seen at once.
    await kube.patch(CONFIGMAPS, "b", {"metadata": {"labels": {"tier": "gpu"}}}, namespace="default")
    assert await names("tier=gpu") == ["a", "b"] and await names("tier==cpu") == []
    await kube.create(dict(configmap("d"), metadata={"name": "d", "labels": {"tier": "gpu"}}), namespace="default")
    await kube.delete(CONFIGMAPS, "a", namespace="default")
    assert await names("tier=gpu") == ["b", "d"] and await names("tier=gpu,tier!=gpu") == []


async def test_the_kubernetes_client_works_against_it(kube):
    """The real `kubernetes` client (in a thread: the server runs in this loop) through the kubeconfig."""
    def use_client() -> tuple[str, list[str], int]:
        with kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig)) as client:
            core = kubernetes.client.CoreV1Api(client)
            version = kubernetes.client.VersionApi(client).get_code().git_version
            core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"n": "1"}})
            core.patch_namespaced_config_map("c", "default", {"data": {"n": "2"}})  # strategic merge patch
            core.replace_namespaced_config_map("c", "default", core.read_namespaced_config_map("c", "default"))
            names = [ns.metadata.name for ns in core.list_namespace().items]
            core.delete_namespaced_config_map("c", "default")
            return version, names, core.list_namespaced_config_map("default").items
    version, names, left = await asyncio.to_thread(use_client)
    assert version.startswith("v1.") and "default" in names and left == []
    assert kube.calls == {("create", "configmaps"): 1, ("patch", "configmaps"): 1, ("get", "configmaps"): 1,
                          ("update", "configmaps"): 1, ("list", "namespaces"): 1, ("delete", "configmaps"): 1,
                          ("list", "configmaps"): 1}


# ----- the real kopf operator with the toy handlers -----

async def create_and_wait_handled(kube, name: str, namespace: str, replicas: int = 2) -> dict:
    await kube.create(llmservice(name, replicas), namespace=namespace)
    return await kube.wait_for(lambda: (svc := kube.object(LLMSERVICES, name, namespace))
                               and svc.get("status", {}).get("phase") == "Created" and svc)


@pytest.mark.looptime
async def test_kopf_creates_owned_objects_posts_status_and_events_and_updates_on_spec_change(kube, operator_runner):
    await kube.create_namespace("ns1")
    async with operator_runner(toy_handlers, namespaces=["ns1"]):
        svc = await create_and_wait_handled(kube, "svc", "ns1", replicas=2)
        deployment = kube.object(DEPLOYMENTS, "svc-pool", "ns1")
        assert deployment["spec"]["replicas"] == 2
        assert deployment["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
        assert kube.object(CONFIGMAPS, "svc-routing", "ns1")["data"] == {"replicas": "2"}
        assert [e["reason"] for e in kube.events("svc", "ns1")] == ["Created"]
        assert svc["metadata"]["generation"] == 1

        await kube.patch(LLMSERVICES, "svc", {"spec": {"replicas": 5}}, namespace="ns1")
        await kube.wait_for(lambda: kube.object(DEPLOYMENTS, "svc-pool", "ns1")["spec"]["replicas"] == 5)
        svc = await kube.wait_for(lambda: (s := kube.object(LLMSERVICES, "svc", "ns1"))["status"].get("replicas") and s)
        assert (svc["metadata"]["generation"], svc["status"]["replicas"]) == (2, 5)
        # Two events from one kopf generateName prefix: both kept under distinct names.
        await kube.wait_for(lambda: len(kube.events("svc", "ns1")) == 2)
        assert [e["reason"] for e in kube.events("svc", "ns1")] == ["Created", "Rescaled"]
    assert toy_handlers.CREATED == ["svc"]
    for pair in [("create", "apps/deployments"), ("create", "configmaps"), ("patch", "apps/deployments"),
                 ("create", "events"), ("list", "melange.ai/llmservices"), ("watch", "melange.ai/llmservices"),
                 ("patch", "melange.ai/llmservices"), ("patch", "melange.ai/llmservices/status")]:
        assert pair in kube.calls, pair
    # The fixture's own writes are not the operator's: it created the namespace and the service.
    assert ("create", "namespaces") not in kube.calls and ("create", "melange.ai/llmservices") not in kube.calls


@pytest.mark.looptime
async def test_a_60_s_kopf_timer_fires_repeatedly_in_loop_time(kube, operator_runner):
    await kube.create_namespace("ns1")
    async with operator_runner(toy_handlers, namespaces=["ns1"]):
        await create_and_wait_handled(kube, "svc", "ns1")
        loop = asyncio.get_running_loop()
        start = loop.time()
        svc = await kube.wait_for(lambda: (s := kube.object(LLMSERVICES, "svc", "ns1"))["status"].get(
            "tick", {}).get("ticks", 0) >= 3 and s, timeout_s=600)
        assert 120 <= loop.time() - start < 200  # three ticks 60 s apart, the first at once
    assert toy_handlers.TICKS == ["svc"] * 3 and svc["status"]["tick"] == {"ticks": 3}


@pytest.mark.looptime
async def test_deleting_the_service_deletes_what_it_owns(kube, operator_runner):
    await kube.create_namespace("ns1")
    async with operator_runner(toy_handlers, namespaces=["ns1"]):
        await create_and_wait_handled(kube, "svc", "ns1")
        await kube.create(configmap("unrelated"), namespace="ns1")
        await kube.delete(LLMSERVICES, "svc", namespace="ns1")
        await kube.wait_for(lambda: kube.object(LLMSERVICES, "svc", "ns1") is None)  # kopf drops its finalizer
    assert kube.objects(DEPLOYMENTS, "ns1") == []
    assert [c["metadata"]["name"] for c in kube.objects(CONFIGMAPS, "ns1")] == ["unrelated"]


@pytest.mark.looptime
async def test_a_restarted_operator_resumes_without_creating_again(kube, operator_runner):
    await kube.create_namespace("ns1")
    async with operator_runner(toy_handlers, namespaces=["ns1"]):
        svc = await create_and_wait_handled(kube, "svc", "ns1")
    assert "kopf.zalando.org/last-handled-configuration" in svc["metadata"]["annotations"]
    async with operator_runner(toy_handlers, namespaces=["ns1"]):  # the module is reloaded: lists restart empty
        await kube.wait_for(lambda: toy_handlers.RESUMED == ["svc"])
    assert toy_handlers.CREATED == [] and len(kube.objects(DEPLOYMENTS, "ns1")) == 1


@pytest.mark.looptime
async def test_with_peering_the_lower_priority_operator_stays_paused_until_the_higher_one_leaves(kube, operator_runner):
    await kube.create_namespace("ns1")
    await kube.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "default"}},
                      namespace="ns1")
    peering = dict(namespaces=["ns1"], standalone=False)
    high = await operator_runner.start(toy_handlers, priority=100, identity="high", memo=kopf.Memo(operator="high"),
                                       **peering)
    low = await operator_runner.start(toy_handlers, priority=0, identity="low", memo=kopf.Memo(operator="low"),
                                      **peering)
    await kube.wait_for(lambda: {"high", "low"} <= set(kube.object("kopf.dev/v1/kopfpeerings", "default", "ns1")
                                                      .get("status", {})))
    svc = await create_and_wait_handled(kube, "svc", "ns1")
    await asyncio.sleep(5)  # loop time: an active second operator would have handled it well within this
    assert svc["status"]["handledBy"] == "high" and toy_handlers.CREATED == ["svc"]
    await high.stop()  # the high one leaves the peering; the low one resumes and handles what comes next
    await create_and_wait_handled(kube, "svc2", "ns1")
    assert kube.object(LLMSERVICES, "svc2", "ns1")["status"]["handledBy"] == "low"
    await low.stop()
