"""One writer per bundle: an advisory lock held for a whole read-modify-write of bundle.json.

Every stage reads bundle.json, works (seconds to an hour), adds its section and writes the file
back. Two commands on one bundle at the same time (`export` while `calibrate` runs, `evaluate`
beside `calibrate`) would each write the copy they read, and the second write silently drops the
first one's record. So a command that changes a bundle holds `bundle_lock(directory)` from before it
loads the bundle until after its last write; a second command waits for it (saying so on stderr),
and gives up after a timeout with a message naming the holder.

The lock is `fcntl.flock` on `BUNDLE/.bundle.lock`: the kernel releases it when the holder exits,
however it exits (kill -9 included), so there is never a stale lock to clean up by hand. The file
itself is left in place on release (removing a lock file while another process waits on it lets
two processes hold "the" lock at once); it holds the holder's pid and command for the message.
The lock is advisory: code that writes bundle.json without taking it is not stopped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgecxr.core.errors import EdgeCXRError

LOCK_NAME = ".bundle.lock"
#: environment variable: seconds a command waits for a bundle another command is changing
TIMEOUT_ENV = "EDGECXR_LOCK_TIMEOUT"
#: a calibration with --fallback auto can hold a bundle for half an hour; wait a good part of that
DEFAULT_TIMEOUT_S = 600.0
_POLL_S = 0.2

#: resolved bundle directory -> time.time() when this process acquired its lock
_HELD: dict[Path, float] = {}


class BundleLockedError(EdgeCXRError):
    """Another process kept the bundle locked for longer than this one would wait."""


def lock_timeout(default: float = DEFAULT_TIMEOUT_S) -> float:
    """Seconds to wait for a bundle lock: $EDGECXR_LOCK_TIMEOUT (0 = do not wait), else `default`."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise EdgeCXRError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds >= 0")
    return value


def held_since(directory: str | Path) -> float | None:
    """When this process took the lock of `directory` (time.time()), or None when it does not hold it."""
    return _HELD.get(_key(directory))


def _key(directory: str | Path) -> Path:
    return Path(os.path.abspath(directory)).resolve()


def _holder(fd: int) -> str:
    """'pid N (edgecxr calibrate)' as the holder wrote it, or 'another process'."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"pid {pid}" + (f" ({command})" if command else "")


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:2]] if sys.argv and sys.argv[0] else []
    return " ".join(a for a in argv if a.isprintable())[:200]


@contextlib.contextmanager
def bundle_lock(
    directory: str | Path,
    *,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the bundle's lock for the body of the `with`; waits for another holder.

    Re-entrant within a process (a command that locks and then calls a stage that locks again
    does not deadlock on itself). A folder this process cannot write to is not locked: nothing
    can change the bundle there (the command's own write would fail with the OS's reason).

    Args:
        directory: the bundle directory (it must exist).
        timeout: seconds to wait; None: `lock_timeout()` ($EDGECXR_LOCK_TIMEOUT or 600).
        log: where the one "waiting for the lock ..." line goes (default: stderr).

    Raises:
        BundleLockedError: the lock was not free within `timeout` (exit code 1).
    """
    import fcntl

    key = _key(directory)
    if key in _HELD:
        yield key
        return
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            yield key  # read-only: no writer can be here to race with
            return
        raise
    try:
        wait = lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + wait
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if time.monotonic() >= deadline:
                    raise BundleLockedError(
                        f"{directory}: the bundle is being changed by {holder}"
                        + (f"; gave up after waiting {wait:g} s" if wait else "")
                        + f" (run again when it has finished; {TIMEOUT_ENV} sets how long to wait)"
                    ) from None
                if not said:
                    say(f"waiting for the lock on {directory} held by {holder}... (up to {wait:g} s)")
                    said = True
                time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {_command()}\n".encode("utf-8", "replace"), 0)
        except OSError:
            pass  # the pid is for the message only
        _HELD[key] = time.time()
        try:
            yield key
        finally:
            _HELD.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
