"""Progress bars that suit where they are written: a live bar on a terminal, a few plain lines in a log.

On a terminal, ``progress_bar`` is tqdm's bar. When standard error is a file or a pipe (a log,
CI, ``nohup``), a bar's carriage-return updates would pile up on one line of the file, one per
step; there it prints a plain line instead: a first one after ``LOG_FIRST_S`` seconds, then at
most one every ``LOG_INTERVAL_S`` seconds, and a last one when a bar that printed finishes. A
30-minute training run writes a few lines per epoch, and a task of a few seconds writes none.
In Jupyter, tqdm draws its own widget. ``enabled=False`` (the command line's ``--no-progress``)
silences both.

``EpochProgress`` is the progress of one training epoch: a bar over its steps and the running
mean of the loss, shared by the diffusion model's training loop and the judge's.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 60.0  # how often a bar writing to a log prints a line
LOG_FIRST_S = 5.0  # when it prints its first: a task that runs this long gets a line saying it has started


class LogProgress:
    """The part of tqdm's interface the package uses, written as plain lines for a log."""

    def __init__(self, total: int, desc: str, unit: str = "it", interval_s: float = LOG_INTERVAL_S,
                 first_s: float = LOG_FIRST_S) -> None:
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.n, self.postfix, self.lines = 0, "", 0
        self._started = time.monotonic()
        self._due = self._started + min(first_s, interval_s)

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() >= self._due:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        if self.lines and self.n:
            self._print()
        self.lines = 0  # a second close prints nothing

    def _print(self) -> None:
        now, self.lines = time.monotonic(), self.lines + 1
        self._due = now + self.interval_s
        elapsed = now - self._started
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {elapsed:.0f} s{extra}", file=sys.stderr, flush=True)


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it") -> Any:
    """A bar over ``total`` steps: tqdm's on a terminal, ``LogProgress`` in a log, silent if not ``enabled``."""
    if enabled and not _is_terminal(sys.stderr):
        return LogProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def _is_terminal(stream: Any) -> bool:
    if type(stream).__module__.startswith("ipykernel"):
        return True  # a notebook: tqdm.auto draws a widget that updates in place
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without a terminal, or closed
        return False


class EpochProgress:
    """Counts the steps of an epoch and the images' summed loss; the bar shows their mean every 20 steps."""

    def __init__(self, steps: int, desc: str, enabled: bool = True) -> None:
        self.total, self.seen, self.steps = 0.0, 0, 0
        self._bar = progress_bar(steps, desc, enabled, unit="step")

    def add(self, mean_loss: float, images: int) -> None:
        """One step whose loss, averaged over its ``images`` images, was ``mean_loss``."""
        self.total += mean_loss * images
        self.seen += images
        self._bar.update()
        if self.steps % 20 == 0:
            self._bar.set_postfix(loss=f"{self.mean:.4f}")
        self.steps += 1

    @property
    def mean(self) -> float:
        return self.total / self.seen

    def close(self) -> None:
        self._bar.close()
