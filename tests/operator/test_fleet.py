"""Many services under the real operator (kopf, the `kubernetes` client, the emulated API): passes are
capped to `max_passes` at once, every service gets a pass every interval at its own phase, and a burst
of services created together is reconciled without more passes at once than the cap."""
from __future__ import annotations

import asyncio
import copy

import kopf
import pytest
import yaml

from melange.operator import handlers
from melange.operator.core.schedule import phase_s
from melange.operator.handlers import TICK_S, OperatorConfig

from .conftest import LLMSERVICES
from .schema import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.looptime]
ARENA = yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text())
INTERVAL_S = 20.0
SERVICES = 8


def service(k: int) -> dict:
    manifest = copy.deepcopy(ARENA)
    manifest["metadata"] = {"name": f"svc-{k}", "namespace": "default"}
    manifest["spec"]["workload"]["static"]["rate"] = 1.0 + k % 3
    manifest["spec"]["reallocation"] = {"interval": f"{INTERVAL_S:g}s"}
    return manifest


async def test_passes_are_capped_spread_by_phase_and_never_miss_an_interval(kube, operator_runner, monkeypatch):
    config = OperatorConfig(max_passes=2)
    passes: list[tuple[str, bool, float]] = []  # (service, interval pass, start on the operator's clock)
    running, most = 0, 0

    reconcile_service = reconcile_once = None

    async def recorded(body, memo, logger, fresh_metrics=True, on_phase=False):
        passes.append((body["metadata"]["name"], fresh_metrics, config.clock()))
        return await reconcile_service(body, memo, logger, fresh_metrics, on_phase)

    async def counted(*args, **kwargs):
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.5)  # a pass's work takes time: others due meanwhile must wait for a slot
            return await reconcile_once(*args, **kwargs)
        finally:
            running -= 1

    async with operator_runner(handlers, namespaces=["default"], memo=kopf.Memo(config=config)):
        # (after the start: the runner loads the handlers module afresh)
        reconcile_service, reconcile_once = handlers.reconcile_service, handlers._reconcile_once
        monkeypatch.setattr(handlers, "reconcile_service", recorded)
        monkeypatch.setattr(handlers, "_reconcile_once", counted)
        for k in range(SERVICES):  # created together
            await kube.create(service(k))
        await kube.wait_for(lambda: len([s for s in kube.objects(LLMSERVICES, "default")
                                         if (s.get("status") or {}).get("allocation")]) == SERVICES, timeout_s=60)
        created = config.clock()
        await asyncio.sleep(5 * INTERVAL_S)
        ended = config.clock()
    assert most == 2  # the burst reached the cap and never passed it
    uids = {s["metadata"]["name"]: s["metadata"]["uid"] for s in kube.objects(LLMSERVICES, "default")}
    for name, uid in uids.items():
        starts = [at for who, _, at in passes if who == name and created <= at <= ended]
        interval_starts = [at for who, fresh, at in passes if who == name and fresh and created + 1 <= at <= ended]
        # no service waits long: gaps of at most an interval, a tick, and the wait for a slot (at most
        # every other service's 0.5 s pass ahead of it, two at a time)
        wait = TICK_S + SERVICES * 0.5 / 2 + 0.5
        gaps = [b - a for a, b in zip([created] + starts, starts + [ended])]
        assert max(gaps) <= INTERVAL_S + wait, (name, gaps)
        # the first interval pass after the create pass starts half an interval plus half the service's
        # phase after it (within a tick and the wait for a slot), the later ones an interval after the one
        # before (and that wait)
        fresh = [at for who, fresh, at in passes if who == name and fresh]
        assert len(fresh) >= 5, (name, fresh)
        first = fresh[0] + INTERVAL_S / 2 + phase_s(uid, INTERVAL_S) / 2
        assert first <= fresh[1] <= first + wait, (name, fresh, phase_s(uid, INTERVAL_S))
        assert all(INTERVAL_S <= b - a <= INTERVAL_S + wait for a, b in zip(fresh[1:], fresh[2:])), (name, fresh)
