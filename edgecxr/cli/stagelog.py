"""The log of a long command (calibrate, qat): one line per stage, details behind -v.

The stages log through a plain `log(str)` callable. By the library's convention a line indented by
two spaces is a detail of the current stage (`  bisect: 12 node(s) in float, ...`, `  sensitivity:
30/131 nodes, 95 s`); a calibration with fallback writes ~80 of them over five minutes. Without
`-v` a detail is not printed: on a terminal it becomes the one status line, redrawn in place (with
an ETA where the line says `k/N`), and cleared before the next stage's line; off a terminal (a log
file, CI) only every fourth `k/N` step is written, so a log still shows that a long stage moves.
With `-v` every line is printed as it comes.
"""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

_COUNT = re.compile(r"\b(\d+)/(\d+)\b")


class StageLog:
    """A `log(str)` callable for the stages (see the module docstring)."""

    def __init__(self, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = 0  # width of the status line on screen
        self._t0: dict[str, float] = {}  # first time each counted detail was seen (its ETA's start)
        self._quarter: dict[str, int] = {}

    def __call__(self, message: str) -> None:
        if self.verbose or not message.startswith("  "):
            self._clear()
            print(message, file=self.stream, flush=True)
            return
        text = message.strip()
        count = _COUNT.search(text)
        if count is not None:
            key = text[: count.start()]
            done, total = int(count.group(1)), max(1, int(count.group(2)))
            start = self._t0.setdefault(key, time.perf_counter())
            if done and done < total:
                left = (time.perf_counter() - start) / done * (total - done)
                text = f"{text}, ETA {left / 60:.0f} min" if left >= 90 else f"{text}, ETA {left:.0f} s"
            if not self.live:
                quarter = 4 * done // total
                if quarter > self._quarter.get(key, 0):
                    self._quarter[key] = quarter
                    print(f"  {text}", file=self.stream, flush=True)
                return
        if self.live:
            line = f"  {text}"[:160]
            print("\r" + line.ljust(self._drawn), end="", file=self.stream, flush=True)
            self._drawn = len(line)

    def _clear(self) -> None:
        if self._drawn:
            print("\r" + " " * self._drawn + "\r", end="", file=self.stream, flush=True)
            self._drawn = 0

    def close(self) -> None:
        self._clear()
