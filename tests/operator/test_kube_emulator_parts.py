"""The emulator's pure parts: path parsing, RBAC names, merge-patch, selectors."""
from __future__ import annotations

from melange.testing.kube_emulator import (api_error, matches_fields, matches_labels, merge_patch, parse_path,
                                           rbac_resource)


def test_paths_split_into_group_version_namespace_plural_name_subresource():
    assert parse_path("/api/v1/namespaces") == parse_path("/api/v1/namespaces/")
    assert (parse_path("/api/v1/namespaces").plural, parse_path("/api/v1/namespaces").name) == ("namespaces", None)
    named = parse_path("/api/v1/namespaces/ns1")
    assert (named.plural, named.name, named.namespace) == ("namespaces", "ns1", None)
    status = parse_path("/apis/melange.ai/v1alpha1/namespaces/ns1/llmservices/a/status")
    assert (status.group, status.version, status.namespace, status.plural, status.name, status.subresource) == (
        "melange.ai", "v1alpha1", "ns1", "llmservices", "a", "status")
    assert parse_path("/version") is None


def test_rbac_names_and_merge_patch_and_selectors():
    assert rbac_resource(parse_path("/api/v1/events"), None) == "events"
    assert rbac_resource(parse_path("/apis/melange.ai/v1alpha1/llmservices"), "status") == "melange.ai/llmservices/status"
    assert merge_patch({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"b": None, "c": [2]}, "e": 2}) == {
        "a": {"c": [2]}, "d": 1, "e": 2}
    obj = {"metadata": {"name": "n", "labels": {"app": "x"}}, "involvedObject": {"name": "svc"}}
    assert matches_fields(obj, "metadata.name=n,involvedObject.name==svc") and not matches_fields(obj, "metadata.name!=n")
    assert matches_labels(obj, "app=x") and not matches_labels(obj, "app in (y)") and matches_labels(obj, "")
    assert api_error(404, "NotFound", "m", name="n").details == {"name": "n"}
