"""Progress of an experiment: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import anyio

__all__ = ["Progress"]


class Progress:
    """Counts runs and shows them: done, failed, running, rate, ETA.

    Args:
        name: the experiment's name.
        total: runs in the experiment.
        finished: runs already finished before this run started.
        enabled: True/False, or None to show it only on a terminal as a bar and
            as plain periodic lines elsewhere (CI, nox logs).
        interval: seconds between two plain lines.
    """

    def __init__(
        self,
        name: str,
        total: int,
        finished: int = 0,
        *,
        enabled: bool | None = None,
        interval: float = 10.0,
        stream: IO[str] | None = None,
    ) -> None:
        self.name = name
        self.total = total
        self.done = 0
        self.failed = 0
        self.running = 0
        self.previously = finished
        self._stream = stream or sys.stderr
        self._enabled = enabled is not False
        self._tty = enabled is None and self._stream.isatty()
        self._interval = interval
        self._started = time.monotonic()
        self._bar: Any = None
        self._bar_task: Any = None

    @property
    def finished(self) -> int:
        return self.previously + self.done + self.failed

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (self.done + self.failed) / elapsed
        left = self.total - self.finished
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        return (
            f"[{self.name}] {self.finished}/{self.total} finished "
            f"({self.done} done, {self.failed} failed now; {self.previously} before), "
            f"{self.running} running, {rate:.2f} runs/s, ETA {eta}"
        )

    def start(self) -> None:
        if not (self._enabled and self._tty):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "failed {task.fields[failed]}  running {task.fields[running]}  {task.fields[rate]}"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self._stream),
        )
        self._bar.start()
        self._bar_task = self._bar.add_task(
            self.name, total=self.total, completed=self.previously, failed=0, running=0, rate=""
        )

    def changed(self) -> None:
        if self._bar is not None:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            self._bar.update(
                self._bar_task,
                completed=self.finished,
                failed=self.failed,
                running=self.running,
                rate=f"{(self.done + self.failed) / elapsed:.2f} runs/s",
            )

    async def report_periodically(self) -> None:
        """Print a plain line every ``interval`` seconds (when no bar is shown).

        Cancellation: how it stops (it never returns); nothing is left half
        done, a line being printed is printed whole.
        """
        if self._bar is not None or not self._enabled:
            await anyio.sleep_forever()
        while True:
            await anyio.sleep(self._interval)
            print(self.line(), file=self._stream, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self.changed()
            self._bar.stop()
            self._bar = None
        elif self._enabled:
            print(self.line(), file=self._stream, flush=True)
