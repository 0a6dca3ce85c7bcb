"""An emulated Kubernetes API on 127.0.0.1 for the operator's tests and `melange demo`, where no
kube-apiserver exists: kmock's `KubernetesEmulator` (an in-memory object store over HTTP) with the gaps
closed that the real kopf operator and the `kubernetes` client run into.

What kmock 0.8 lacks and this subclass adds (each marked `# gap:` where it is closed):
- `metadata.uid`, `creationTimestamp`, a cluster-wide `resourceVersion` bumped on every write, and
  `generation` bumped only when something outside `metadata` and `status` changes;
- watches that send ADDED/MODIFIED/DELETED as they happen, start after `?resourceVersion=`, answer
  410 Gone for a version no longer kept, and cannot lose an event between the snapshot and the stream;
- JSON-patch (422 when a `test` op fails), JSON merge-patch, strategic merge-patch (as merge-patch:
  lists are replaced whole, not merged by key), PUT, the `status` and `scale` subresources;
- server-side apply, approximated for one field manager: the object is created when missing, else the
  applied configuration is merged into it (no managed fields: a field the configuration stops naming
  stays, and no conflict is ever reported);
- `/api/v1/namespaces` (kmock's path parser fails on it), `/version/`, `generateName`;
- CustomResourceDefinitions: created ones appear in discovery with their subresources and serve
  their custom resources; deleting one deletes its objects;
- label and field selectors on lists and watches;
- deletion: finalizers, then garbage collection of dependents (ownerReferences; `Orphan` keeps them),
  and a namespace's deletion deletes what it holds;
- a stand-in for the Deployment controller: `mark_ready()`, or `auto_ready=True` to set the
  Deployment's status to its spec after each write;
- a record of the (verb, resource) pairs that clients call, in RBAC terms, for the chart's RBAC test.

Not emulated: authentication and RBAC (every call is allowed), admission and schema validation
(tests validate manifests with jsonschema / kubernetes-validate instead), field ownership, real
controllers (no Pods, ReplicaSets or Endpoints appear). The `kubernetes` client itself refuses numeric
resource quantities and non-string ConfigMap values: write them as strings.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import functools
import json
import random
import re
import string
import uuid
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import parsing, rendering

FIXTURE_AGENT = "melange-kube-fixture"  # requests with this User-Agent are not recorded as the operator's calls
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
APPLY_PATCH = "application/apply-patch+yaml"
NAMESPACES = kmock.resource("", "v1", "namespaces")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
CRUD_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
KEPT_EVENTS = 20_000  # watch events kept for resuming watches; older versions get 410 Gone


class KubernetesError(kmock.KubernetesError):
    """An API error rendered as a Kubernetes `Status` (kmock's carries a traceback as its details)."""


def api_error(status: int, reason: str, message: str, **details: Any) -> KubernetesError:
    return KubernetesError(status=status, reason=reason, message=message, details=details)


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """The emulated API server's handler; serve it with `serve_emulator()`."""

    auto_ready: bool = False  # play the Deployment controller: status follows spec after each write
    url: str = ""  # set by serve_emulator()
    calls: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    clusterwide_calls: set = attrs.field(factory=set, init=False)
    deleted_uids: set = attrs.field(factory=set, init=False)  # of objects taken out (the garbage collector knows them)
    _revision: int = attrs.field(default=0, init=False)
    _log: list = attrs.field(factory=list, init=False)  # (revision, resource, watch event), oldest first
    _log_wakeup: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    # Called synchronously after every write to the store (tests check invariants at each step).
    write_hooks: list = attrs.field(factory=list, init=False)
    _trimmed: int = attrs.field(default=0, init=False)  # events dropped from the log's head so far
    # The store's keys by resource, so that a list reads one kind's objects rather than every object
    # (with 1,000 services stored, scanning all 10,000 objects per list made the emulator the bottleneck).
    _keys: dict = attrs.field(factory=dict, init=False)
    # Per resource: the writes to it when built and its keys by (label, value), for lists with an equality
    # selector (each of 1,000 services lists a few of its own objects among thousands of one kind).
    _by_label: dict = attrs.field(factory=dict, init=False)
    _writes: collections.Counter = attrs.field(factory=collections.Counter, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock 0.8 reads its data with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()  # the built-in kinds of a recent cluster, with scopes and subresources
        self.fallback["get /version/"] << self._serve_server_version  # gap: the `kubernetes` client's path
        for name in ("default", "kube-system"):
            self._write_new(NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # ----- request parsing and dispatch -----

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Parse the request with namespaces understood as a resource, then serve it (kmock's own
        entry point, with its parser replaced: it fails on `/api/v1/namespaces`)."""
        await raw_request.read()
        try:
            request = await parse_request(raw_request, id=len(self._requests))
            self._requests.append(request)
            return await self._handle(request)
        except Exception as exc:  # rendered as a Kubernetes Status, as kmock does; kept for assertions
            if self._errors and not isinstance(exc, KubernetesError):
                self._errors[-1].append(exc)
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.resource.plural is None:  # discovery and plain HTTP: kmock's
            return await kmock.RawHandler._handle(self, request)
        self._record(request)
        resource = request.resource
        if resource not in self.resources:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({resource.plural})")
        method, sub = request.method.value, request.subresource
        if sub not in (None, "status", "scale") or (sub and sub not in self.resources[resource].subresources):
            raise api_error(404, "NotFound", f"{resource.plural}/{sub}: no such subresource")
        if method == "GET" and request.params.get("watch") in ("true", "1"):
            return await self._watch(request)
        if method == "GET":
            return json_response(self._get(request) if request.name else self._list(request))
        if method == "POST" and request.name is None:
            return json_response(self._create(request), status=201)
        if method == "PATCH" and request.name and sub is None and _is_apply(request) \
                and self.live(resource, request.namespace, request.name) is None:
            return json_response(self._create(request), status=201)  # server-side apply creates
        if method in ("PUT", "PATCH") and request.name:
            return json_response(self._update(request))
        if method == "DELETE":
            return json_response(self._delete_request(request))
        raise api_error(405, "MethodNotAllowed", f"{method} {request.url.path} is not supported")

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError) and not isinstance(exc, KubernetesError):
            exc = KubernetesError(status=exc.status, reason=exc.reason, message=exc.message)  # no traceback
        if isinstance(exc, KubernetesError):
            return json_response({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                  "code": exc.status, "reason": exc.reason, "message": exc.message,
                                  "details": exc.details or {}}, status=exc.status)
        return await super()._render_error(exc)

    def _record(self, request: rendering.Request) -> None:
        """Count the call as RBAC sees it: (verb, `group/plural[/subresource]`)."""
        if request.headers.get("User-Agent") == FIXTURE_AGENT:
            return
        named = request.name is not None
        verb = {"GET": "get" if named else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if named else "deletecollection"}.get(request.method.value, request.method.value.lower())
        if request.method.value == "GET" and request.params.get("watch") in ("true", "1"):
            verb = "watch"
        pair = (verb, rbac_resource(request.resource, request.subresource))
        self.calls[pair] += 1
        if request.namespace is None:
            self.clusterwide_calls.add(pair)

    def dump_calls(self, path: str | Path) -> Path:
        """Write the recorded calls as JSON: one {verb, resource, count, clusterwide} per pair."""
        rows = [{"verb": verb, "resource": res, "count": count, "clusterwide": (verb, res) in self.clusterwide_calls}
                for (verb, res), count in sorted(self.calls.items())]
        Path(path).write_text(json.dumps(rows, indent=1) + "\n")
        return Path(path)

    # ----- reading -----

    def live(self, resource: Any, namespace: str | None, name: str) -> dict | None:
        """The stored object (a copy), or None when it does not exist."""
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def live_objects(self, resource: Any = None, namespace: str | None = None) -> list[tuple[Any, dict]]:
        """(resource, object copy) of every stored object, optionally of one resource and namespace."""
        wanted = kmock.resource(resource) if resource is not None else None
        keys = list(self.objects) if wanted is None else list(self._keys.get(wanted, ()))
        return [(res, copy.deepcopy(self.objects[res, ns, name].raw)) for res, ns, name in keys
                if not self.objects[res, ns, name].deleted and (namespace is None or ns == namespace)]

    def _get(self, request: rendering.Request) -> dict:
        obj = self._existing(request.resource, request.namespace, request.name)
        return scale_of(obj) if request.subresource == "scale" else obj

    def _existing(self, resource: Any, namespace: str | None, name: str) -> dict:
        obj = self.live(resource, namespace, name)
        if obj is None:
            raise api_error(404, "NotFound", f'{resource.plural} "{name}" not found',
                            name=name, group=resource.group, kind=resource.plural)
        return obj

    def _list(self, request: rendering.Request) -> dict:
        items = self._selected(request)
        info = self.resources[request.resource]
        return {"apiVersion": api_version(request.resource), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._revision)}, "items": items}

    def _selected(self, request: rendering.Request) -> list[dict]:
        """Copies of the objects a list or watch selects (only those are copied: with hundreds of objects
        stored, copying every one for each label-selected list made the emulator the bottleneck)."""
        labels, fields = request.params.get("labelSelector", ""), request.params.get("fieldSelector", "")
        selected = []
        for key in self._candidates(request.resource, labels):
            obj = self.objects[key]
            if not obj.deleted and (request.namespace is None or key[1] == request.namespace) \
                    and matches_labels(obj.raw, labels) and matches_fields(obj.raw, fields):
                selected.append(copy.deepcopy(obj.raw))
        return selected

    def _candidates(self, resource: Any, labels: str) -> list:
        """The store keys of `resource` that a label selector may select: with an equality term, those
        carrying its label and value (the fewest of its terms), else every key of the kind."""
        every = self._keys.get(resource, {})
        terms = [term.replace("==", "=").split("=", 1) for term in split_selector(labels)
                 if "=" in term and "!=" not in term]
        if not terms:
            return list(every)
        built = self._by_label.get(resource)
        if built is None or built[0] != self._writes[resource]:
            index: dict[tuple[str, str], list] = {}
            for key in every:
                if self.objects[key].deleted:
                    continue
                for label in (self.objects[key].raw.get("metadata", {}).get("labels") or {}).items():
                    index.setdefault(label, []).append(key)
            built = self._by_label[resource] = (self._writes[resource], index)
        return min((built[1].get((k.strip(), v.strip()), []) for k, v in terms), key=len)

    async def _watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Stream watch events: the current objects as ADDED when no version is given, else every change
        after that version; then changes as they happen. gap: kmock replays all as ADDED, ignores the
        version, and loses events written between its snapshot and its subscription."""
        since = request.params.get("resourceVersion", "")
        position, events = len(self._log), []
        if since in ("", "0") or request.params.get("sendInitialEvents") == "true":
            # Snapshot and log position taken with no await in between: nothing can slip through.
            events = [{"type": "ADDED", "object": obj} for obj in self._selected(request)]
            if request.params.get("sendInitialEvents") == "true":
                events.append({"type": "BOOKMARK", "object": {
                    "kind": self.resources[request.resource].kind, "apiVersion": api_version(request.resource),
                    "metadata": {"resourceVersion": str(self._revision),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})
        else:
            position = self._log_position(since)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        if position is None:  # older than what is kept: the client relists
            await response.write(json_line({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                "message": f"too old resource version: {since}"}}))
            return response
        timeout = float(request.params.get("timeoutSeconds", 0)) or None
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                for event in events:
                    await response.write(json_line(event))
                async for event in self._events_after(position, request):
                    await response.write(json_line(event))
        return response

    def _log_position(self, since: str) -> int | None:
        """The index of the first kept event after resourceVersion `since`; None when it is not kept."""
        if not since.isdigit():
            return None
        revision = int(since)
        oldest = self._log[0][0] if self._log else self._revision + 1
        if revision < oldest - 1:
            return None
        return next((k for k, (rev, _, _) in enumerate(self._log) if rev > revision), len(self._log))

    async def _events_after(self, position: int, request: rendering.Request) -> AsyncIterator[dict]:
        labels, fields = request.params.get("labelSelector", ""), request.params.get("fieldSelector", "")
        trimmed_before = self._trimmed
        while True:
            wakeup = self._log_wakeup
            position -= self._trimmed - trimmed_before  # the log was trimmed at its head meanwhile
            trimmed_before = self._trimmed
            while position < len(self._log):
                _, resource, event = self._log[position]
                position += 1
                obj = event["object"]
                if (resource == request.resource
                        and (request.namespace is None or obj["metadata"].get("namespace") == request.namespace)
                        and matches_labels(obj, labels) and matches_fields(obj, fields)):
                    yield event
            await wakeup.wait()

    # ----- writing -----

    def _emit(self, resource: Any, event_type: str, obj: dict) -> None:
        self._log.append((self._revision, resource, {"type": event_type, "object": copy.deepcopy(obj)}))
        self._writes[resource] += 1
        if len(self._log) > KEPT_EVENTS:
            drop = len(self._log) - KEPT_EVENTS
            del self._log[:drop]
            self._trimmed += drop
        self._log_wakeup.set()
        self._log_wakeup = asyncio.Event()
        for hook in self.write_hooks:
            hook()

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _store(self, resource: Any, namespace: str | None, obj: dict, event_type: str) -> dict:
        """Save a new version of the object under a new resourceVersion and tell the watchers."""
        obj["metadata"]["resourceVersion"] = self._next_revision()
        key = (resource, namespace, obj["metadata"]["name"])
        if key in self.objects:
            self.objects[key].history.append(copy.deepcopy(obj))
        else:
            self.objects[key] = copy.deepcopy(obj)
            self._keys.setdefault(resource, {})[key] = None  # a dict: ordered like the store
        self._emit(resource, event_type, obj)
        return obj

    def _create(self, request: rendering.Request) -> dict:
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise api_error(400, "BadRequest", "the request body must be a JSON object")
        namespace = request.namespace
        if namespace is not None and body.get("metadata", {}).get("namespace") not in (None, namespace):
            raise api_error(400, "BadRequest", "the namespace of the object does not match the namespace of the URL")
        return self._write_new(request.resource, namespace, body)

    def _write_new(self, resource: Any, namespace: str | None, body: dict) -> dict:
        """Create an object: server-set metadata, generateName, the namespace must exist."""
        info = self.resources[resource]
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise api_error(400, "BadRequest", f"{resource.plural} are namespaced: give a namespace")
            if self.live(NAMESPACES, None, namespace) is None:
                raise api_error(404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):  # gap: kmock keys the object by a None name (409 the second time)
                raise api_error(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = unique_name(meta["generateName"], lambda name: self.live(resource, namespace, name) is not None)
        if self.live(resource, namespace, meta["name"]) is not None:
            raise api_error(409, "AlreadyExists", f'{resource.plural} "{meta["name"]}" already exists',
                            name=meta["name"], group=resource.group, kind=resource.plural)
        obj["apiVersion"], obj["kind"] = api_version(resource), info.kind  # events are posted without them
        if "status" in info.subresources:
            obj.pop("status", None)  # written through the status subresource only, as a real server does
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_field, None)
        # gap: kmock sets none of these
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now_iso())
        if resource == CRDS:
            self._serve_crd(obj)
        stored = self._store(resource, namespace, obj, "ADDED")
        self._after_write(resource, namespace, stored)
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if owners and owners <= self.deleted_uids:
            # The garbage collector deletes a dependent whose owners are all gone, also one created after
            # its owner was deleted (a controller finishing a pass it began before the deletion). gap: a
            # real one also deletes dependents of owners that never existed; tests here make such objects.
            self._delete(resource, namespace, meta["name"], "Background")
        return stored

    def _update(self, request: rendering.Request) -> dict:
        """PUT or PATCH of an object, its status or its scale."""
        resource, namespace, sub = request.resource, request.namespace, request.subresource
        old = self._existing(resource, namespace, request.name)
        target = scale_of(old) if sub == "scale" else old
        changed = apply_change(target, request.method.value, request.headers.get("Content-Type", ""), request.data)
        if sub == "scale":
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["replicas"] = changed.get("spec", {}).get("replicas", 0)
        else:
            new = self._merged_by_subresource(resource, sub, old, changed)
        return scale_of(self._replace(resource, namespace, old, new)) if sub == "scale" else \
            self._replace(resource, namespace, old, new)

    def _merged_by_subresource(self, resource: Any, sub: str | None, old: dict, changed: dict) -> dict:
        """What a write through the main endpoint or `/status` may change: with a status subresource, the
        main endpoint keeps the status and `/status` changes only the status (and the version check)."""
        if "status" not in self.resources[resource].subresources:
            return changed
        if sub == "status":
            new = copy.deepcopy(old)
            new.pop("status", None)
            if "status" in changed:
                new["status"] = changed["status"]
            new["metadata"]["resourceVersion"] = changed.get("metadata", {}).get("resourceVersion")
            return new
        new = copy.deepcopy(changed)
        new.pop("status", None)
        if "status" in old:
            new["status"] = old["status"]
        return new

    def _replace(self, resource: Any, namespace: str | None, old: dict, new: dict) -> dict:
        """Store `new` in place of `old`: server fields kept, version checked, generation bumped when
        more than metadata and status changed; nothing is written when nothing changed."""
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        wanted_version = meta.get("resourceVersion")
        if wanted_version not in (None, old_meta["resourceVersion"]):
            raise api_error(409, "Conflict", f'Operation cannot be fulfilled on {resource.plural} "{old_meta["name"]}": '
                            "the object has been modified; please apply your changes to the latest version and try again")
        for server_field in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion",
                             "deletionTimestamp", "deletionGracePeriodSeconds"):
            if server_field in old_meta:
                meta[server_field] = old_meta[server_field]
            else:
                meta.pop(server_field, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if new == old:
            return old  # a no-op write: no new version, no watch event
        ignored = {"metadata"} | ({"status"} if "status" in self.resources[resource].subresources else set())
        if {k: v for k, v in new.items() if k not in ignored} != {k: v for k, v in old.items() if k not in ignored}:
            meta["generation"] = old_meta.get("generation", 1) + 1
        if resource == CRDS:
            self._serve_crd(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):  # the last finalizer is gone
            return self._remove(resource, namespace, new)
        stored = self._store(resource, namespace, new, "MODIFIED")
        self._after_write(resource, namespace, stored)
        return stored

    def _after_write(self, resource: Any, namespace: str | None, obj: dict) -> None:
        if self.auto_ready and resource == DEPLOYMENTS:
            self.mark_ready(namespace, obj["metadata"]["name"])

    def mark_ready(self, namespace: str, name: str, ready: int | None = None) -> dict:
        """Play the Deployment controller: status.replicas = spec.replicas, readyReplicas = `ready`
        (default all of them). Zero counts are left out, as a real server leaves them out."""
        old = self._existing(DEPLOYMENTS, namespace, name)
        wanted = old.get("spec", {}).get("replicas", 1)
        ready = wanted if ready is None else ready
        counts = {"replicas": wanted, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": wanted}
        status = {"observedGeneration": old["metadata"]["generation"], **{k: v for k, v in counts.items() if v}}
        new = copy.deepcopy(old)
        new["status"] = status
        return self._replace(DEPLOYMENTS, namespace, old, new) if new != old else old

    # ----- deleting -----

    def _delete_request(self, request: rendering.Request) -> dict:
        body = request.data if isinstance(request.data, dict) else {}
        policy = request.params.get("propagationPolicy") or body.get("propagationPolicy") or "Background"
        if request.name is None:  # deletecollection
            deleted = [self._delete(request.resource, obj["metadata"].get("namespace"), obj["metadata"]["name"], policy)
                       for obj in self._selected(request)]
            info = self.resources[request.resource]
            return {"apiVersion": api_version(request.resource), "kind": f"{info.kind}List",
                    "metadata": {"resourceVersion": str(self._revision)}, "items": deleted}
        self._existing(request.resource, request.namespace, request.name)
        return self._delete(request.resource, request.namespace, request.name, policy)

    def _delete(self, resource: Any, namespace: str | None, name: str, policy: str = "Background") -> dict:
        """Delete now, or mark for deletion while finalizers remain (the last one's removal deletes)."""
        obj = self._existing(resource, namespace, name)
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return obj
            new = copy.deepcopy(obj)
            new["metadata"].update(deletionTimestamp=now_iso(), deletionGracePeriodSeconds=0)
            return self._store(resource, namespace, new, "MODIFIED")
        return self._remove(resource, namespace, obj, policy)

    def _remove(self, resource: Any, namespace: str | None, obj: dict, policy: str = "Background") -> dict:
        """Take the object out of the store, then what it owned or held (the garbage collector's job)."""
        obj["metadata"]["resourceVersion"] = self._next_revision()
        self.objects[resource, namespace, obj["metadata"]["name"]].delete()
        self._emit(resource, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        self.deleted_uids.add(uid)
        if resource == NAMESPACES:
            for res, held in self.live_objects(namespace=None):
                if held["metadata"].get("namespace") == obj["metadata"]["name"] and self.live(
                        res, held["metadata"]["namespace"], held["metadata"]["name"]) is not None:
                    self._delete(res, held["metadata"]["namespace"], held["metadata"]["name"])
        if resource == CRDS:
            self._unserve_crd(obj)
        self._collect_dependents(uid, policy)
        return obj

    def _collect_dependents(self, owner_uid: str, policy: str) -> None:
        """Delete the objects whose every owner is gone (background cascade), or with `Orphan`, drop the
        owner from their ownerReferences."""
        live_uids = {obj["metadata"]["uid"] for _, obj in self.live_objects()}
        for res, dependent in self.live_objects():
            refs = dependent["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            ns, name = dependent["metadata"].get("namespace"), dependent["metadata"]["name"]
            if self.live(res, ns, name) is None:
                continue  # gone meanwhile, by an earlier cascade
            if policy == "Orphan":
                new = copy.deepcopy(dependent)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                self._replace(res, ns, dependent, new)
            elif not any(ref.get("uid") in live_uids for ref in refs):
                self._delete(res, ns, name, policy)

    # ----- custom resource definitions -----

    def _serve_crd(self, crd: dict) -> None:
        """gap: make a CRD's versions discoverable and servable, and report it Established."""
        spec = crd.get("spec", {})
        names, group = spec.get("names", {}), spec.get("group", "")
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            subresources = set(version.get("subresources") or {})
            self.resources[kmock.resource(group, version["name"], names.get("plural", ""))] = kmock.ResourceInfo(
                kind=names.get("kind"), singular=names.get("singular") or names.get("kind", "").lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced", verbs=CRUD_VERBS,
                shortnames=names.get("shortNames", []), categories=names.get("categories", []),
                subresources=subresources & {"status", "scale"})
        crd["status"] = {"acceptedNames": names, "storedVersions": [v["name"] for v in spec.get("versions", [])
                                                                     if v.get("storage")],
                         "conditions": [{"type": t, "status": "True", "reason": t, "lastTransitionTime": now_iso()}
                                        for t in ("NamesAccepted", "Established")]}

    def _unserve_crd(self, crd: dict) -> None:
        spec = crd.get("spec", {})
        for version in spec.get("versions", []):
            res = kmock.resource(spec.get("group", ""), version["name"], spec.get("names", {}).get("plural", ""))
            for res_, ns, name in [k for k in self.objects if k[0] == res]:
                if not self.objects[res_, ns, name].deleted:
                    self._emit(res_, "DELETED", self.objects[res_, ns, name].raw)
                del self.objects[res_, ns, name]
                self._keys.get(res_, {}).pop((res_, ns, name), None)
            if res in self.resources:
                del self.resources[res]


# ----- pure helpers -----

def rbac_resource(resource: Any, subresource: str | None) -> str:
    """`plural` for the core group, `group/plural` otherwise, `/subresource` appended."""
    name = f"{resource.group}/{resource.plural}" if resource.group else resource.plural
    return f"{name}/{subresource}" if subresource else name


def api_version(resource: Any) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else resource.version


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_response(payload: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.json_response(payload, status=status)


def json_line(event: Mapping) -> bytes:
    return json.dumps(event).encode() + b"\n"


def unique_name(prefix: str, taken) -> str:
    """`prefix` + 5 random lowercase letters and digits, as the API server completes a generateName."""
    for _ in range(100):
        name = prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if not taken(name):
            return name
    raise api_error(500, "InternalError", f"no free name with the prefix {prefix!r} after 100 tries")


def scale_of(obj: dict) -> dict:
    """The autoscaling/v1 Scale view of a Deployment."""
    meta = obj["metadata"]
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta},
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
            "status": {"replicas": obj.get("status", {}).get("replicas", 0)}}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _is_apply(request: rendering.Request) -> bool:
    return request.headers.get("Content-Type", "").split(";")[0].strip() == APPLY_PATCH


def apply_change(old: dict, method: str, content_type: str, body: Any) -> dict:
    """The object after a PUT (the body) or a PATCH of the given content type; 422 when a JSON-patch
    `test` fails (gap: kmock answers 500). Server-side apply is a merge of the applied configuration."""
    content_type = content_type.split(";")[0].strip()
    if method == "PUT":
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "the request body must be a JSON object")
        return copy.deepcopy(body)
    if content_type == "application/json-patch+json":
        try:
            return jsonpatch.apply_patch(old, body, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise api_error(422, "Invalid", f"the JSON patch could not be applied: {exc}") from None
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json", APPLY_PATCH):
        # Strategic merge-patch is approximated by merge-patch: lists are replaced whole, not merged by key.
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "a merge patch must be a JSON object")
        return merge_patch(old, body)
    raise api_error(415, "UnsupportedMediaType", f"patch type {content_type!r} is not supported by the emulator "
                    "(JSON patch, merge patch, strategic merge patch and apply are)")


SELECTOR_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


@functools.lru_cache(maxsize=4096)
def split_selector(selector: str) -> tuple[str, ...]:
    """Split a selector on the commas that are not inside a set's parentheses (remembered: a list tests
    every object of its kind against the same selector)."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return tuple(p.strip() for p in parts + [current] if p.strip())


def matches_labels(obj: dict, selector: str) -> bool:
    """Whether the object's labels satisfy a label selector (=, ==, !=, in, notin, key, !key)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in split_selector(selector):
        if found := SELECTOR_SET.match(term):
            key, op, values = found.group(1), found.group(2), {v.strip() for v in found.group(3).split(",")}
            if (labels.get(key) in values) != (op == "in") or (op == "in" and key not in labels):
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


def matches_fields(obj: dict, selector: str) -> bool:
    """Whether the object satisfies a field selector (`a.b=v`, `a.b==v`, `a.b!=v` on any dotted path)."""
    for term in split_selector(selector):
        negate = "!=" in term
        path, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if (str(current) if current is not None else "") == value if negate else \
                (str(current) if current is not None else "") != value:
            return False
    return True


async def parse_request(raw_request: aiohttp.web.BaseRequest, id: int) -> rendering.Request:
    """kmock's request parsing with the path split by `parse_path`: kmock's own parser fails on
    `/api/v1/namespaces` and reads `/api/v1/namespaces/x` as a list in namespace x."""
    body, text = await raw_request.read(), await raw_request.text()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    address = parse_path(raw_request.path)
    resource = None if address is None else kmock.resource(
        group=address.group, version=address.version, plural=address.plural)
    method = kmock.method(raw_request.method)
    action = parsing.guess_k8s(address, method, dict(raw_request.query)) if address else None
    return rendering.Request(
        id=id, raw_request=raw_request, url=raw_request.url, method=raw_request.method,
        params=dict(raw_request.query), headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
        data=data, body=body, text=text, action=action, resource=resource,
        namespace=address.namespace if address else None, name=address.name if address else None,
        subresource=address.subresource if address else None)


def parse_path(path: str) -> parsing.ParsedPath | None:
    """Split `/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]` or `/apis/GROUP/VERSION/...`; None otherwise."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    rest = rest + [None, None]
    return parsing.ParsedPath(group=group, version=version, plural=rest[0], namespace=namespace,
                              name=rest[1], subresource="/".join(p for p in rest[2:] if p) or None)


# ----- running it -----

@contextlib.asynccontextmanager
async def serve_emulator(*, auto_ready: bool = False) -> AsyncIterator[KubeEmulator]:
    """Serve a fresh emulator on 127.0.0.1 (a port the OS picks) in this event loop; its `url` is set."""
    emulator = KubeEmulator(auto_ready=auto_ready)
    async with emulator, kmock.Server(emulator) as server:
        emulator.url = str(server.url).rstrip("/")
        yield emulator


def write_kubeconfig(url: str, path: str | Path, namespace: str = "default") -> Path:
    """A kubeconfig whose current context points at `url` (no credentials: the emulator checks none)."""
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "emulator", "preferences": {},
              "clusters": [{"name": "emulator", "cluster": {"server": url}}],
              "users": [{"name": "emulator", "user": {"token": "emulated"}}],
              "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                            "namespace": namespace}}]}
    Path(path).write_text(yaml.safe_dump(config))
    return Path(path)


def crd_manifest(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
                 status: bool = True, short_names: Iterable[str] = ()) -> dict:
    """A minimal apiextensions.k8s.io/v1 CRD accepting any fields (for toy kinds and third-party ones)."""
    served = {"name": version, "served": True, "storage": True,
              "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    if status:
        served["subresources"] = {"status": {}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced" if namespaced else "Cluster",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "shortNames": list(short_names)},
                     "versions": [served]}}


def peering_crds() -> list[dict]:
    """kopf's peering CRDs (kopf.dev/v1 ClusterKopfPeering and KopfPeering), as kopf's docs give them."""
    return [crd_manifest("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False, status=False),
            crd_manifest("kopf.dev", "v1", "kopfpeerings", "KopfPeering", namespaced=True, status=False)]
