"""Desired against actual: create, replace only what changed, scale a dropped option to zero, then delete."""
from __future__ import annotations

import copy

from melange.operator.core.diff import ObjectKey, diff
from melange.operator.core.planner import HASH_ANNOTATION


def obj(kind: str, name: str, digest: str, option: str | None = None, replicas: int | None = None) -> dict:
    labels = {"melange.ai/service": "chat"} | ({"melange.ai/option": option} if option else {})
    body = {"apiVersion": "apps/v1" if kind == "Deployment" else "v1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "labels": labels, "annotations": {HASH_ANNOTATION: digest}}}
    if replicas is not None:
        body["spec"] = {"replicas": replicas}
    return body


DESIRED = [obj("Deployment", "chat-l4", "a", "l4", 2), obj("Service", "chat-l4", "b", "l4"),
           obj("ConfigMap", "chat-routing", "c")]


def key(kind: str, name: str) -> ObjectKey:
    return ObjectKey("apps/v1" if kind == "Deployment" else "v1", kind, "ns", name)


def test_nothing_exists_everything_is_created():
    actions = diff(DESIRED, [])
    assert [ObjectKey.of(o) for o in actions.create] == [ObjectKey.of(o) for o in DESIRED]
    assert not (actions.replace or actions.scale_to_zero or actions.delete)


def test_unchanged_objects_are_never_written():
    actual = copy.deepcopy(DESIRED)
    actual[0]["status"] = {"readyReplicas": 2}
    actual[0]["metadata"]["resourceVersion"] = "17"
    actions = diff(DESIRED, actual)
    assert actions.empty and len(actions.unchanged) == 3


def test_a_changed_hash_is_replaced():
    actual = copy.deepcopy(DESIRED)
    actual[2]["metadata"]["annotations"][HASH_ANNOTATION] = "old"
    actions = diff(DESIRED, actual)
    assert [ObjectKey.of(o) for o in actions.replace] == [key("ConfigMap", "chat-routing")]
    assert not actions.create and not actions.delete


def test_a_dropped_option_is_scaled_to_zero_then_deleted_with_its_service():
    actual = copy.deepcopy(DESIRED) + [obj("Deployment", "chat-a100", "d", "a100", 1), obj("Service", "chat-a100", "e", "a100")]
    first = diff(DESIRED, actual)
    assert first.scale_to_zero == (key("Deployment", "chat-a100"),)
    assert first.delete == ()  # its Service stays while the pool drains
    actual[3]["spec"]["replicas"] = 0
    second = diff(DESIRED, actual)
    assert second.scale_to_zero == ()
    assert set(second.delete) == {key("Deployment", "chat-a100"), key("Service", "chat-a100")}
    third = diff(DESIRED, actual[:3] + actual[4:])
    assert third.delete == (key("Service", "chat-a100"),)
