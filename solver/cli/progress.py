"""A one-line progress bar for work made of steps, drawn on a terminal (stderr) only once the work
has taken longer than a delay, so quick runs and piped output stay clean."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


class ProgressBar:
    """Call `step(label)` before each of `total` steps and `close()` at the end. Nothing is drawn
    until `delay_s` has passed since the bar was made, nor when `stream` is not a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, delay_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.delay_s = delay_s
        self.clock = clock
        self.started = clock()
        self.done = -1
        self.enabled = self.stream.isatty()
        self.shown = False

    def step(self, label: str) -> None:
        """Starting the next step, described by `label`: redraw once the delay has passed."""
        self.done += 1
        if self.enabled and self.clock() - self.started > self.delay_s:
            filled = BAR_WIDTH * self.done // max(self.total, 1)
            self.stream.write(f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self.done}/{self.total} {label}"
                              "\033[K")
            self.stream.flush()
            self.shown = True

    def close(self) -> None:
        """Clear the bar's line, if one was drawn."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False
