from __future__ import annotations

import subprocess
import sys

import pytest

from edgecxr.core.errors import MissingDependencyError
from edgecxr.core.lazy import available, require


def test_require_missing_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"edgecxr\[gpu\]"):
        require("polygraphy.this_does_not_exist_either") if available("polygraphy") else require("polygraphy")
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        require("tensorrt") if not available("tensorrt") else pytest.skip("tensorrt is installed")


def test_cli_help_does_not_import_tensorflow():
    """`edgecxr --help` and the runtime must never pull in TensorFlow (start-up time, no TF on workstations)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from edgecxr.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "import edgecxr, edgecxr.runtime.backends as b\n"
        "b.backends()\n"
        "from edgecxr import Classifier\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tensorrt', 'tf2onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
