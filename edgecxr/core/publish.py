"""Candidate -> check -> publish or reject: the one policy for writing a derived artifact.

A stage writes its new file beside the final path, checks it, and only then renames it into place
(atomic on one file system); a file that fails its check is kept as `*.rejected.*` for inspection
and never published.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    pass
log = logging.getLogger(__name__)


def candidate_path(final: Path) -> Path:
    """A temp file beside `final` with the same suffix (runners choose by suffix)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".candidate.onnx", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def rejected_path(final: Path) -> Path:
    """Where a failing artifact is kept for inspection: model.int8.onnx -> model.int8.rejected.onnx."""
    return final.with_name(final.name[: -len(".onnx")] + ".rejected.onnx")
