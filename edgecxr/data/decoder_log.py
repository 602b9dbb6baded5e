"""What libjpeg and libpng print while OpenCV decodes: captured, and judged fatal or harmless.

OpenCV turns a decoder *error* into a None result, but damage the decoders can work around is only a
*warning*, printed by libjpeg/libpng straight to file descriptor 2 (not through OpenCV's log and not
as an exception). Half a JPEG followed by an end-of-image marker decodes "successfully" to an image
whose lower half is gray, with nothing but "Corrupt JPEG data: premature end of data segment" on
stderr; garbage in the entropy-coded data, "IDAT: Too much image data" and the like behave the same.
So for one decode fd 2 is pointed at a temporary file, and every line there is judged:

  * libjpeg warnings that mean the pixels are not what was encoded (`_JPEG_FATAL`) and every
    "libpng error", and "libpng warning"s about the critical chunks (IHDR, PLTE, IDAT, IEND) or
    without a chunk name, are fatal: the caller raises ImageLoadError with the message;
  * warnings that change no decoded pixel (an unknown JFIF revision, an ancillary chunk such as an
    invalid iCCP profile, libpng's "Interlace handling" notice) are dropped, as they were never
    the user's problem;
  * any other line is not a decoder's and is written back to stderr.

Thread safety: fd 2 belongs to the whole process. `judged_call` lets decodes run at the same time
(the pipelined `infer` decodes in worker threads): they share one capture window, and each decode
reads only what was written to it between its own start and end. Nothing there (the usual case) or
only harmless lines: the decode was clean. A fatal line there may be another thread's, so that
decode is run once more alone, under `capture_decoder_messages`, which waits until no other decode
is capturing, and its own verdict is taken from that run: a warning never lands on the wrong file.
A shared window is closed at least every MAX_WINDOW_S (new decodes wait for it to drain), so a line
that another thread writes to fd 2 meanwhile (a progress bar) is written back to stderr slightly
late but never lost or misjudged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: guards the capture state below; waited on for a window to close or an exclusive capture to end
_COND = threading.Condition()

#: longest a shared capture window stays open before new decodes wait for it to close
MAX_WINDOW_S = 0.25


#: libjpeg(-turbo) warning texts (jerror.h JWRN_*) that mean the decoded pixels are not the encoded
#: image: a truncated or corrupt scan is padded with gray or decoded out of sync.
_JPEG_FATAL = (
    "Corrupt JPEG data",  # premature end of data segment, N extraneous bytes, bad Huffman code, ...
    "Premature end of JPEG file",
    "Inconsistent progression sequence",
    "Invalid SOS parameters for sequential JPEG",
    "Application transferred too many scanlines",
    "Application transferred too few scanlines",
)


#: libjpeg warnings that change no pixel.
_JPEG_HARMLESS = ("Warning: unknown JFIF revision number", "Unknown Adobe color transform code")


#: libpng warnings without a chunk name that change no pixel.
_PNG_HARMLESS = ("Interlace handling should be turned on when using png_read_image",)


_PNG_WARNING = re.compile(r"libpng warning: (?:(?P<chunk>[A-Za-z]{4}): )?(?P<text>.*)")


class Captured:
    """The lines a decode printed: `fatal` (why the image is wrong) and `harmless` ones."""

    def __init__(self) -> None:
        self.fatal: list[str] = []
        self.harmless: list[str] = []

    def reason(self) -> str | None:
        """The first fatal message as a short one-line reason, or None when the decode was clean."""
        if not self.fatal:
            return None
        line = self.fatal[0]
        for prefix, who in (("libpng error: ", "libpng"), ("libpng warning: ", "libpng"), ("Corrupt JPEG data: ", "libjpeg")):
            if line.startswith(prefix):
                return f"{line[len(prefix):]}; {who}"
        return f"{line}; libjpeg"


class _Window:
    """fd 2 pointed at a temporary file until close(); what was written is read back by offset."""

    def __init__(self) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # Python's own buffered output belongs to the real stderr
        self.tmp = tempfile.TemporaryFile()
        try:
            self.saved: int | None = os.dup(2)
        except OSError:  # fd 2 is closed (a daemon): capture anyway, close it again afterwards
            self.saved = None
        os.dup2(self.tmp.fileno(), 2)
        self.opened = time.monotonic()

    def size(self) -> int:
        return os.fstat(self.tmp.fileno()).st_size

    def read(self, start: int, end: int) -> str:
        return os.pread(self.tmp.fileno(), end - start, start).decode("utf-8", "replace") if end > start else ""

    def close(self) -> str:
        """Restore fd 2; returns everything written meanwhile."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if self.saved is None:
            os.close(2)
        else:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        text = self.read(0, self.size())
        self.tmp.close()
        return text


class _State:
    active = 0  # decodes inside the shared window
    exclusive = False  # a capture_decoder_messages is running
    window: _Window | None = None


def _write_back(text: str, captured: Captured) -> None:
    other = _judge(text, captured)
    if other:
        with contextlib.suppress(OSError):
            os.write(2, other.encode("utf-8", "replace"))


@contextlib.contextmanager
def capture_decoder_messages() -> Iterator[Captured]:
    """Point fd 2 at a temporary file for the body, with no other decode capturing; judge what was written.

    The `Captured` yielded is filled in on exit, so read it after the `with` block.
    """
    captured = Captured()
    with _COND:
        while _State.active or _State.exclusive:
            _COND.wait()
        _State.exclusive = True
    try:
        window = _Window()
        try:
            yield captured
        finally:
            _write_back(window.close(), captured)
    finally:
        with _COND:
            _State.exclusive = False
            _COND.notify_all()


def judged_call(fn: Callable[[], T]) -> tuple[T, Captured]:
    """Run `fn` (one decode) with fd 2 captured, alongside other threads' decodes; its result and verdict.

    See the module docstring: a fatal line written while `fn` ran, by it or by a concurrent decode,
    makes `fn` run once more alone, and that run's result and verdict are returned.
    """
    with _COND:
        while _State.exclusive or (_State.window is not None
                                   and time.monotonic() - _State.window.opened > MAX_WINDOW_S):
            _COND.wait()
        if _State.window is None:
            _State.window = _Window()
        _State.active += 1
        window = _State.window
        start = window.size()
    mine = ""
    try:
        result = fn()
    finally:
        with _COND:
            mine = window.read(start, window.size())
            _State.active -= 1
            if _State.active == 0:
                _State.window = None
                _write_back(window.close(), Captured())  # decoder lines are judged per decode
                _COND.notify_all()
    seen = Captured()
    _judge(mine, seen)
    if not seen.fatal:
        return result, Captured()
    with capture_decoder_messages() as log:
        result = fn()
    return result, log


def _judge(text: str, captured: Captured) -> str:
    """Sort captured lines into captured.fatal / .harmless; return the rest (not a decoder's)."""
    other: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        verdict = _verdict(stripped)
        if verdict is None:
            other.append(line + "\n")
        elif verdict:
            captured.fatal.append(stripped)
        else:
            captured.harmless.append(stripped)
    return "".join(other)


def _verdict(line: str) -> bool | None:
    """True: fatal decoder message; False: harmless decoder message; None: not a decoder's."""
    if line.startswith(_JPEG_FATAL) or line.startswith("libpng error"):
        return True
    if line.startswith(_JPEG_HARMLESS):
        return False
    match = _PNG_WARNING.fullmatch(line)
    if match is None:
        return None
    chunk = match.group("chunk")
    if chunk is None:
        return not match.group("text").startswith(_PNG_HARMLESS)
    # Ancillary chunks (lowercase first letter) carry no pixels OpenCV uses; critical ones do.
    return chunk[0].isupper()
