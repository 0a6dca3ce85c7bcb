"""Run the real kopf operator inside this event loop (beside the Kubernetes emulator), for the tests
and `melange demo`: its handlers from a module, its login from the kubeconfig in $KUBECONFIG, stopped
cleanly through kopf's stop flag.

kopf's `run_tasks` cancels, when the operator stops, every task created after it started, "as there
is no way to trace who spawned what" (kopf/_core/reactor/running.py). In a shared loop those include
the emulator's request handlers and a second operator's tasks. A task factory here tags each task with
the operator whose context created it, and kopf is told to leave every other task alone.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import signal
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import attrs
import kopf

_OWNER: contextvars.ContextVar[Any] = contextvars.ContextVar("melange_kopf_owner", default=None)


class _Owner:
    """The tasks one operator created (weakly held: finished tasks go away)."""

    def __init__(self) -> None:
        self.tasks: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()


class _NotOwnedBy:
    """kopf's `ignored` tasks: every task but those of this operator."""

    def __init__(self, owner: _Owner) -> None:
        self.owner = owner

    def __contains__(self, task: object) -> bool:
        return task not in self.owner.tasks

    def __iter__(self):  # kopf only tests membership; a Collection needs these
        return iter(())

    def __len__(self) -> int:
        return 0


def _install_task_tagging(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap the loop's task factory (once) so that each task joins its creating operator's set."""
    previous = loop.get_task_factory()
    if getattr(previous, "melange_tags_tasks", False):
        return

    def tagging_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        owner = kwargs["context"].get(_OWNER) if kwargs.get("context") is not None else _OWNER.get()
        if owner is not None:
            owner.tasks.add(task)
        return task

    tagging_factory.melange_tags_tasks = True
    loop.set_task_factory(tagging_factory)


def load_handlers(handlers: ModuleType | str) -> kopf.OperatorRegistry:
    """A fresh registry holding the handlers that importing (or re-importing) the module declares,
    plus a login from $KUBECONFIG (kopf's default login via the `kubernetes` client reads the path
    the environment had when `kubernetes` was first imported)."""
    registry = kopf.OperatorRegistry()
    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        name = handlers.__name__ if isinstance(handlers, ModuleType) else handlers
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)
    finally:
        kopf.set_default_registry(previous)

    @kopf.on.login(registry=registry)
    def login_from_kubeconfig(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    return registry


@attrs.define
class RunningOperator:
    """One kopf operator running in this loop: its registry, settings, and the task running it."""

    registry: kopf.OperatorRegistry
    settings: kopf.OperatorSettings
    stop_flag: asyncio.Event
    ready_flag: asyncio.Event
    task: asyncio.Task

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Ask kopf to stop (as SIGTERM would) and wait for it; its exception, if it failed, is raised."""
        self.stop_flag.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        finally:
            if not self.task.done():
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):  # kopf adds handlers and never removes them
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)


async def start_operator(handlers: ModuleType | str, *, namespaces: list[str] | tuple[str, ...] = (),
                         clusterwide: bool = False, standalone: bool = True, priority: int = 0,
                         peering_name: str = "default", identity: str | None = None, memo: Any = None,
                         configure: Callable[[kopf.OperatorSettings], None] | None = None,
                         startup_timeout_s: float = 30.0) -> RunningOperator:
    """Start kopf with the module's handlers against $KUBECONFIG's server and wait until it is ready
    (its startup handlers done). `namespaces` or `clusterwide=True`; peering unless `standalone`;
    `memo` (a kopf.Memo) is what the handlers get as `memo`; `configure` adjusts kopf's settings."""
    if not namespaces and not clusterwide:
        raise ValueError("start_operator: give namespaces=[...] or clusterwide=True (as kopf's -n / -A)")
    registry = load_handlers(handlers)
    settings = kopf.OperatorSettings()
    if configure is not None:
        configure(settings)
    stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
    owner = _Owner()

    async def run() -> None:
        tasks = await kopf.spawn_tasks(
            registry=registry, settings=settings, namespaces=list(namespaces), clusterwide=clusterwide,
            # kopf makes peering mandatory when given a peering name, even when standalone: it then
            # pauses every watch for want of peering resources it never looks for.
            standalone=standalone, priority=priority, peering_name=None if standalone else peering_name,
            identity=identity,  # a plain str is what kopf keeps (peering.Identity is a NewType)
            memo=memo, stop_flag=stop_flag, ready_flag=ready_flag)
        await kopf.run_tasks(tasks, ignored=_NotOwnedBy(owner))

    loop = asyncio.get_running_loop()
    _install_task_tagging(loop)
    context = contextvars.copy_context()
    context.run(_OWNER.set, owner)
    task = loop.create_task(run(), name="kopf operator", context=context)
    operator = RunningOperator(registry=registry, settings=settings, stop_flag=stop_flag,
                               ready_flag=ready_flag, task=task)
    ready = asyncio.ensure_future(ready_flag.wait())
    try:
        done, _ = await asyncio.wait({ready, task}, timeout=startup_timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if task in done:
        task.result()  # raises what stopped it
        raise RuntimeError("the kopf operator exited during its startup")
    if not done:
        await operator.stop()
        raise TimeoutError(f"the kopf operator was not ready after {startup_timeout_s:g} s")
    return operator


@contextlib.asynccontextmanager
async def running_operator(handlers: ModuleType | str, **options: Any) -> AsyncIterator[RunningOperator]:
    """`start_operator` as a context manager that stops the operator on exit."""
    operator = await start_operator(handlers, **options)
    try:
        yield operator
    finally:
        await operator.stop()
