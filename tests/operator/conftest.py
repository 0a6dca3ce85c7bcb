"""Fixtures for the operator's tests: `kube`, an emulated Kubernetes API on 127.0.0.1 with the
LLMService CRD installed, and `operator_runner`, the real kopf operator in the test's event loop.

    @pytest.mark.asyncio
    @pytest.mark.looptime                       # kopf timers fire without waiting
    async def test_something(kube, operator_runner):
        await kube.create_namespace("ns1")
        async with operator_runner(my_handlers_module, namespaces=["ns1"]):
            await kube.create(llmservice_manifest, namespace="ns1")
            deployment = await kube.wait_for(lambda: kube.object("apps/v1/deployments", "x", "ns1"))
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import aiohttp
import kmock
import pytest
import pytest_asyncio
import yaml

from melange.testing.kopf_runner import RunningOperator, running_operator, start_operator
from melange.testing.kube_emulator import (FIXTURE_AGENT, KubeEmulator, crd_manifest, peering_crds,
                                           serve_emulator, write_kubeconfig)

from ..conftest import ROOT

T = TypeVar("T")
LLMSERVICE_CRD = ROOT / "crds" / "llmservice.yaml"
LLMSERVICES = "melange.ai/v1alpha1/llmservices"


def llmservice_crd() -> dict:
    """The project's CRD when the checkout has it, else a schemaless one of the same group/version/kind."""
    if LLMSERVICE_CRD.is_file():
        return yaml.safe_load(LLMSERVICE_CRD.read_text())
    return crd_manifest("melange.ai", "v1alpha1", "llmservices", "LLMService", short_names=["llms"])


class Kube:
    """The running emulator and the test's own client for it. Reads of the store (`object`,
    `objects`) are direct; writes go over HTTP like any client's but are not recorded in `calls`."""

    def __init__(self, emulator: KubeEmulator, kubeconfig: Path, session: aiohttp.ClientSession) -> None:
        self.emulator, self.kubeconfig, self.session = emulator, kubeconfig, session
        self.url = emulator.url

    # --- reading the store directly (no HTTP) ---

    def object(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        """The stored object (a copy), or None; `resource` as "apps/v1/deployments" or "v1/configmaps"."""
        return self.emulator.live(resource, namespace, name)

    def objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        """Every stored object of the resource (in one namespace when given)."""
        return [obj for _, obj in self.emulator.live_objects(resource, namespace)]

    def events(self, involved_name: str | None = None, namespace: str | None = None) -> list[dict]:
        """The core/v1 Events (about one object when `involved_name` is given), oldest first."""
        return [event for event in self.objects("v1/events", namespace)
                if involved_name is None or event.get("involvedObject", {}).get("name") == involved_name]

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """(verb, resource) -> count of the calls clients other than this fixture made (RBAC terms)."""
        return dict(self.emulator.calls)

    def dump_calls(self, path: str | Path) -> Path:
        """Write the recorded calls to a JSON file (for the chart's RBAC test)."""
        return self.emulator.dump_calls(path)

    def mark_ready(self, namespace: str, name: str, ready: int | None = None) -> dict:
        """Play the Deployment controller once: readyReplicas = `ready` (default spec.replicas)."""
        return self.emulator.mark_ready(namespace, name, ready)

    async def wait_for(self, check: Callable[[], T | Awaitable[T]], timeout_s: float = 10.0) -> T:
        """Re-evaluate `check` after every write to the store until it returns something truthy; that is
        returned. TimeoutError after `timeout_s` of loop time (fake time under looptime)."""
        async with asyncio.timeout(timeout_s):
            while True:
                wakeup = self.emulator._log_wakeup  # set by the next write
                result = check()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    result = await result
                if result:
                    return result
                await wakeup.wait()

    # --- writing over HTTP ---

    def _path(self, resource: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        res = kmock.resource(resource)
        base = f"/api/{res.version}" if not res.group else f"/apis/{res.group}/{res.version}"
        parts = [base] + ([f"namespaces/{namespace}"] if namespace else []) + [res.plural]
        parts += [name] if name else []
        parts += [sub] if sub else []
        return "/".join(parts)

    def resource_of(self, manifest: dict) -> str:
        """The "group/version/plural" of a manifest's apiVersion and kind, as discovery knows them."""
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        group, _, version = api_version.rpartition("/")
        for res in self.emulator.resources:
            if res.group == group and res.version == version and self.emulator.resources[res].kind == kind:
                return f"{group}/{version}/{res.plural}" if group else f"{version}/{res.plural}"
        raise LookupError(f"{api_version} {kind} is not served by the emulator (install its CRD first)")

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict | None:
        async with self.session.request(method, self.url + path, **kwargs) as response:
            body = await response.json()
            if response.status == 404 and method == "GET":
                return None
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {body.get('message')}")
            return body

    async def create(self, manifest: dict, namespace: str | None = None) -> dict:
        """POST the manifest (into `namespace`, or the manifest's own); the stored object is returned."""
        namespace = namespace or manifest.get("metadata", {}).get("namespace")
        resource = self.resource_of(manifest)
        namespaced = self.emulator.resources[kmock.resource(resource)].namespaced
        return await self._call("POST", self._path(resource, namespace if namespaced else None), json=manifest)

    async def apply_file(self, path: str | Path, namespace: str | None = None) -> list[dict]:
        """Create every document of a YAML file, in order."""
        return [await self.create(doc, namespace) for doc in yaml.safe_load_all(Path(path).read_text()) if doc]

    async def create_namespace(self, name: str) -> dict:
        return await self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    async def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        """GET one object over HTTP; None when it does not exist."""
        return await self._call("GET", self._path(resource, namespace, name))

    async def list(self, resource: str, namespace: str | None = None, labels: str | None = None) -> list[dict]:
        params = {"labelSelector": labels} if labels else {}
        return (await self._call("GET", self._path(resource, namespace), params=params))["items"]

    async def patch(self, resource: str, name: str, patch: dict | list, namespace: str | None = None,
                    subresource: str | None = None) -> dict:
        """Merge-patch (a dict) or JSON-patch (a list) an object or its `status`."""
        kind = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        return await self._call("PATCH", self._path(resource, namespace, name, subresource), json=patch,
                                headers={"Content-Type": kind})

    async def delete(self, resource: str, name: str, namespace: str | None = None,
                     propagation: str | None = None) -> dict:
        params = {"propagationPolicy": propagation} if propagation else {}
        return await self._call("DELETE", self._path(resource, namespace, name), params=params)


@pytest_asyncio.fixture
async def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kube]:
    """A fresh emulated API on 127.0.0.1 with the LLMService CRD and kopf's peering CRDs installed,
    $KUBECONFIG pointing at it (for kopf and the `kubernetes` client), namespace `default` present."""
    async with serve_emulator() as emulator, \
            aiohttp.ClientSession(headers={"User-Agent": FIXTURE_AGENT}) as session:
        kubeconfig = write_kubeconfig(emulator.url, tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        kube = Kube(emulator, kubeconfig, session)
        for crd in [llmservice_crd(), *peering_crds()]:
            await kube.create(crd)
        yield kube


class OperatorRunner:
    """Starts kopf operators against `kube`; those still running at the test's end are stopped."""

    def __init__(self) -> None:
        self.running: list[RunningOperator] = []

    def __call__(self, handlers: ModuleType | str, **options: Any) -> contextlib.AbstractAsyncContextManager[RunningOperator]:
        """`async with operator_runner(module, namespaces=[...]) as operator:` (see `start`)."""
        return running_operator(handlers, **options)

    async def start(self, handlers: ModuleType | str, **options: Any) -> RunningOperator:
        """Start and return an operator (stop it with `await operator.stop()`). Options: namespaces=[...]
        or clusterwide=True, standalone=True (False: kopf peering), priority, peering_name, identity,
        configure=fn(settings)."""
        operator = await start_operator(handlers, **options)
        self.running.append(operator)
        return operator


@pytest_asyncio.fixture
async def operator_runner(kube: Kube) -> AsyncIterator[OperatorRunner]:
    runner = OperatorRunner()
    yield runner
    for operator in runner.running:
        if not operator.task.done():
            await operator.stop()
