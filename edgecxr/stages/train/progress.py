"""Progress inside a training epoch, on the same stream as the epoch lines.

An epoch of the paper-sized models takes 5-20 minutes on a CPU. On a terminal one status line is
redrawn in place (and cleared before the epoch's summary line, so the two never run into each
other); off a terminal (a log file, `nohup`, CI) a plain line is written every tenth of an epoch,
so a log shows that a long epoch is moving without filling up with carriage returns. Keras' own
progress bar is never used: it writes to stdout while the epoch lines go to the log stream.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from edgecxr.core.lazy import require

#: off a terminal: how many progress lines per epoch
LINES_PER_EPOCH = 10
#: on a terminal: the least time between redraws
REDRAW_SECONDS = 0.25


def progress_callback(log: TextIO, total_epochs: int, lines_per_epoch: int = LINES_PER_EPOCH) -> Any:
    """A Keras callback reporting batches within each epoch to `log` (list it before the epoch-line callback)."""
    keras = require("keras", "training")
    live = bool(getattr(log, "isatty", lambda: False)())

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._epoch, self._t0, self._drawn = epoch + 1, time.perf_counter(), 0.0
            steps = int(self.params.get("steps") or 0)
            self._steps = steps
            self._every = max(1, steps // max(1, lines_per_epoch)) if steps else 0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            done = batch + 1
            now = time.perf_counter()
            loss = (logs or {}).get("loss")
            text = (f"epoch {self._epoch}/{total_epochs}  batch {done}/{self._steps or '?'}"
                    + (f"  loss {float(loss):.4f}" if loss is not None else "") + f"  {now - self._t0:.0f}s")
            if live:
                if now - self._drawn >= REDRAW_SECONDS or done == self._steps:
                    log.write("\r\033[K" + text)
                    log.flush()
                    self._drawn = now
            elif self._every and done % self._every == 0 and done != self._steps:
                print(f"  {text}", file=log, flush=True)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if live:
                log.write("\r\033[K")  # the epoch line that follows starts on a clean line
                log.flush()

    return Progress()
