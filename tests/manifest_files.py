"""Writing a manifest CSV for a test's own images (the columns are the rows' keys, in order).

One helper for the fixtures that build small manifests (train, pack, export, data checks), which
each wrote the same five lines of csv.DictWriter.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def write_manifest(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    """`rows` as a manifest CSV at `path` (header from the first row's keys); returns `path`."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
