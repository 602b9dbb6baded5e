"""dicom3tools' `dciodvfy` as a test oracle: the errors it finds in a DICOM file (skips when not installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy_errors(path: Path) -> list[str]:
    """The `Error - ...` lines dciodvfy prints for `path` (it exits 0 either way); skip without dicom3tools."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed; apt-get install dicom3tools to run this check")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
