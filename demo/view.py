"""What the demo shows: a live terminal view (rich) of the traffic, the allocation, its price and the
move in progress; or, off a terminal, one line per change."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table


@dataclass(frozen=True)
class Snapshot:
    elapsed_s: float
    traffic: str  # the mix the player sends now
    source: str  # where the operator reads the workload from
    rate: float  # req/s the player sent over the window
    status: dict[str, Any]
    deployments: dict[str, dict[str, Any]]
    events: list[str]


def _money(value: Any) -> str:
    return "-" if value is None else f"${value:.2f}/h"


def render(snapshot: Snapshot) -> Group:
    """The live view of one snapshot."""
    status = snapshot.status
    workload = status.get("workload") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("time", f"{snapshot.elapsed_s:.0f} s", "traffic sent", f"{snapshot.traffic}, {snapshot.rate:.1f} req/s")
    head.add_row("operator sees", f"{workload.get('rate', 0):.2f} req/s", "read from", snapshot.source)
    options = Table(title="allocation", expand=False)
    for column in ("option", "replicas", "ready", "recommended"):
        options.add_column(column, justify="right" if column != "option" else "left")
    recommended = status.get("recommended") or {}
    for name, count in (status.get("allocation") or {}).items():
        deployment = next((d for n, d in snapshot.deployments.items() if n.endswith(f"-{name}")), None)
        ready = ((deployment or {}).get("status") or {}).get("readyReplicas", 0)
        wanted = ((deployment or {}).get("spec") or {}).get("replicas", 0)
        options.add_row(name, str(count), f"{ready}/{wanted}", str(recommended.get(name, "")))
    best = status.get("bestSingleType") or {}
    money = Table.grid(padding=(0, 2))
    money.add_row("running", _money(status.get("costPerHour")), f"best single type ({best.get('name', '-')})",
                  _money(best.get("costPerHour")), "saves", _saving(status.get("savingsPercent")))
    move = status.get("move") or {}
    if move:  # what the move leads to, priced and compared for the same demand
        money.add_row("moving to", _money(move.get("toCostPerHour")), "", "", "saves",
                      _saving(move.get("toSavingsPercent")))
    decision = status.get("lastDecision") or {}
    lines = [f"move: {move.get('step')} ({move.get('reason', '')})" if move else "move: none",
             f"last decision: {decision.get('reason', '-')}"]
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    metrics = conditions.get("MetricsAvailable")
    if metrics and metrics.get("status") != "True":
        lines.append(f"metrics: {metrics.get('message')}")
    events = Panel("\n".join(snapshot.events[-6:]) or "(none yet)", title="events")
    return Group(head, options, money, *lines, events)


def _saving(percent: float | None) -> str:
    """A saving in words: a mix that cannot serve the demand saves nothing, it falls short."""
    return "-- (falls short of the demand)" if percent is None else f"{percent:.1f}%"


class View:
    """Shows snapshots: a rich Live display on a terminal, else a line per change and a line per Event
    (so that a move's steps all appear, however short each was)."""

    def __init__(self, live: bool) -> None:
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=2, transient=False) if live else None
        if self.live is not None:
            self.live.start()
        self._last: tuple | None = None
        self._printed: collections.Counter[str] = collections.Counter()

    def note(self, text: str) -> None:
        """Say something at once (above the live view on a terminal)."""
        if self.live is not None:
            self.console.print(f"note: {text}", markup=False, highlight=False)
        else:
            print(f"note: {text}", flush=True)

    def show(self, snapshot: Snapshot) -> None:
        if self.live is not None:
            self.live.update(render(snapshot))
            return
        status = snapshot.status
        move = (status.get("move") or {}).get("step") or "-"
        best = status.get("bestSingleType") or {}
        key = (snapshot.traffic, str(status.get("allocation")), move, status.get("costPerHour"), str(best))
        if key != self._last:
            self._last = key
            workload = status.get("workload") or {}
            mix = ", ".join(f"{k} x{v}" for k, v in (status.get("allocation") or {}).items() if v) or "nothing"
            print(f"{snapshot.elapsed_s:6.0f} s  traffic {snapshot.traffic:<9} {snapshot.rate:5.1f} req/s  "
                  f"operator sees {workload.get('rate', 0):5.2f} req/s  {mix:<24} {_money(status.get('costPerHour')):>10}"
                  f"  best single {best.get('name', '-')} {_money(best.get('costPerHour'))}"
                  f"  saves {_saving(status.get('savingsPercent'))}  move {move}", flush=True)
        seen: collections.Counter[str] = collections.Counter()
        for event in snapshot.events:  # each once, the same text again only when posted again
            seen[event] += 1
            if seen[event] > self._printed[event]:
                self._printed[event] += 1
                print(f"{snapshot.elapsed_s:6.0f} s  event {event}", flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
