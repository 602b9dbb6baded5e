"""What the serve tests share: the optional packages they need (the importing module is skipped
without them), the tiny bundle, and starting `edgecxr serve` on a free loopback port.

Every server started here is the real thing (uvicorn, Starlette, the batchers, onnxruntime); only the
model is tiny (`runtime.tinymodels`), so answers can be checked against a numpy reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
tritonhttp = pytest.importorskip("tritonclient.http")

from runtime import tinymodels  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402, F401 (for the importing tests)

from edgecxr.serve import ModelSpec, ServeConfig  # noqa: E402
from edgecxr.serve.server import start_in_thread  # noqa: E402

SHAPE = tinymodels.SPEC.input_shape
#: the tiny ONNX's output name (tinymodels.make_onnx), which the service answers under
OUT = "probs"


def tiny_bundle(folder: Path) -> Path:
    """A tiny FP32-only bundle in `folder`/tiny."""
    return tinymodels.make_bundle(folder / "tiny", int8=False, fp16=False).dir


def start(*models: str, **kw):
    """`edgecxr serve` in a thread on a free port, serving `models` (NAME=PATH or a reference name)."""
    return start_in_thread(ServeConfig(tuple(ModelSpec.parse(m) for m in models), port=0, **kw))
