"""`edgecxr serve`: a local inference service speaking the KServe v2 / Open Inference Protocol.

Non-Python workstation software (C#, C++, a web viewer) talks to the models over HTTP; because the
protocol is the one Triton, KServe and Seldon MLServer speak, a client written against this service
moves to a Triton cluster without being rewritten. See docs/SERVING.md.

Modules: `config` (ServeConfig), `models` (a served Classifier, its batchers, v2 metadata),
`batching` (dynamic batching with a bounded queue), `protocol` (v2 JSON and binary tensors),
`metrics` (Prometheus), `app` (state, start-up, token guard, limits), `routes`, `server` (uvicorn).
Everything here needs the `serve` extra: pip install 'edgecxr[serve]'.
"""

from __future__ import annotations

from edgecxr.serve.config import ServeConfig
from edgecxr.serve.models import ModelSpec

__all__ = ["ModelSpec", "ServeConfig"]
