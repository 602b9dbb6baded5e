"""Typed errors that the CLI turns into one-line messages.

Library code raises these instead of letting a decoder's or framework's exception escape, so a
scanner-side caller can tell "this file is bad" (skip it, keep going) from "this setup is wrong"
(stop) without parsing tracebacks.
"""

from __future__ import annotations

from pathlib import Path


class EdgeCXRError(Exception):
    """Base class: every error the CLI reports as a message rather than a traceback.

    `params` names the arguments of the library call the error is about (e.g. ("parity_split",
    "manifest")). Library messages name the thing, never a command-line flag; the CLI adds the
    options that set those arguments.
    """

    exit_code = 1
    params: tuple[str, ...] = ()

    def __init__(self, *args: object, params: tuple[str, ...] | list[str] = ()):
        super().__init__(*args)
        if params:
            self.params = tuple(params)


class ArgumentError(EdgeCXRError, ValueError):
    """Arguments that contradict each other or cannot apply (a usage error: exit code 2, like the CLI's)."""

    exit_code = 2


class ImageLoadError(EdgeCXRError):
    """One input image could not be read; in a batch the other files are still processed."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(EdgeCXRError):
    """A manifest, split or dataset layout is malformed or inconsistent."""


class BundleError(EdgeCXRError):
    """A model bundle is missing, incomplete or does not match what was asked of it."""


class MissingDependencyError(EdgeCXRError):
    """An optional package is needed for this operation; the message names the extra to install."""

    exit_code = 2

    def __init__(self, module: str, extra: str | None = None, purpose: str | None = None, hint: str | None = None):
        self.module = module
        self.extra = extra
        what = f" for {purpose}" if purpose else ""
        if hint is None:
            hint = "install it with: " + (f"pip install 'edgecxr[{extra}]'" if extra else f"pip install {module}")
        super().__init__(f"'{module}' is required{what} but is not installed; {hint}")


class BackendUnavailableError(EdgeCXRError):
    """The requested inference backend cannot run here (no GPU, no TensorRT, mismatched engine)."""

    exit_code = 2


class EngineMismatchError(BackendUnavailableError):
    """A TensorRT engine was built for another GPU or TensorRT version than the one present."""


class GateFailedError(EdgeCXRError):
    """An artifact failed the accuracy regression gate and was not published."""

    exit_code = 3
