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

Thread safety: fd 2 belongs to the whole process, so captures take one lock and decodes that capture
run one at a time. A line that another thread writes to fd 2 meanwhile lands in the capture, is
not recognised as a decoder message (messages are matched by libjpeg's and libpng's exact wording)
and is written back to stderr once the decode ends, slightly late but never lost or misjudged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()


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


@contextlib.contextmanager
def capture_decoder_messages() -> Iterator[Captured]:
    """Point fd 2 at a temporary file for the body; judge what was written when it ends.

    The `Captured` yielded is filled in on exit, so read it after the `with` block.
    """
    captured = Captured()
    with _LOCK, tempfile.TemporaryFile() as tmp:
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # Python's own buffered output belongs to the real stderr
        try:
            saved: int | None = os.dup(2)
        except OSError:  # fd 2 is closed (a daemon): capture anyway, close it again afterwards
            saved = None
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            if saved is None:
                os.close(2)
            else:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            other = _judge(tmp.read().decode("utf-8", "replace"), captured)
            if other:
                with contextlib.suppress(OSError):
                    os.write(2, other.encode("utf-8", "replace"))


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
