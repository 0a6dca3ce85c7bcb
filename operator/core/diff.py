"""Desired against actual objects: what to create, replace, scale to zero and delete (no API calls).

An object whose hash annotation matches is left alone, so a restart writes nothing. An option that
drops out of the allocation is first scaled to zero, then (on a later pass, once its Deployment
is at zero) deleted with its Service and NodePool.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange.operator.core.planner import HASH_ANNOTATION, OPTION_LABEL


@dataclass(frozen=True)
class ObjectKey:
    """Identity of an object: apiVersion, kind, namespace (None when cluster-scoped) and name."""

    api_version: str
    kind: str
    namespace: str | None
    name: str

    @staticmethod
    def of(obj: Mapping[str, Any]) -> ObjectKey:
        meta = obj.get("metadata", {})
        return ObjectKey(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])

    def describe(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(frozen=True)
class Actions:
    """What to do, in order: create, replace (content changed), scale to zero, delete."""

    create: tuple[dict[str, Any], ...] = ()
    replace: tuple[dict[str, Any], ...] = ()
    scale_to_zero: tuple[ObjectKey, ...] = ()
    delete: tuple[ObjectKey, ...] = ()
    unchanged: tuple[ObjectKey, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.create or self.replace or self.scale_to_zero or self.delete)


def _hash(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)


def _option(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(OPTION_LABEL)


def diff(desired: Sequence[Mapping[str, Any]], actual: Sequence[Mapping[str, Any]]) -> Actions:
    """The actions that make `actual` (the objects the service owns now) match `desired`."""
    actual_by_key = {ObjectKey.of(o): o for o in actual}
    desired_keys = {ObjectKey.of(o) for o in desired}
    create, replace, unchanged = [], [], []
    for obj in desired:
        key = ObjectKey.of(obj)
        current = actual_by_key.get(key)
        if current is None:
            create.append(dict(obj))
        elif _hash(current) != _hash(obj):
            replace.append(dict(obj))
        else:
            unchanged.append(key)
    leftover = [o for k, o in actual_by_key.items() if k not in desired_keys]
    scale, delete = [], []
    draining_options = set()
    for obj in leftover:
        if obj["kind"] == "Deployment":
            if (obj.get("spec") or {}).get("replicas", 1) > 0:
                scale.append(ObjectKey.of(obj))
                draining_options.add(_option(obj))
            else:
                delete.append(ObjectKey.of(obj))
    for obj in leftover:
        if obj["kind"] != "Deployment" and (_option(obj) is None or _option(obj) not in draining_options):
            delete.append(ObjectKey.of(obj))
    return Actions(tuple(create), tuple(replace), tuple(scale), tuple(delete), tuple(unchanged))
