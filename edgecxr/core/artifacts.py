"""The one table of artifact kinds: what each file in a bundle is, which backend runs it, which stage makes it.

Every other module asks this table (by key, precision or file suffix) instead of keeping its own
list, so adding a kind of artifact means adding one row here.

    key         precision  default file        suffixes        backend      made by
    keras       fp32       model.keras         .keras          keras        train
    onnx_fp32   fp32       model.onnx          .onnx           onnxruntime  export
    onnx_fp16   fp16       model.fp16.onnx     .onnx           onnxruntime  export
    onnx_int8   int8       model.int8.onnx     .onnx           onnxruntime  calibrate
    engine      (sidecar)  engines/*.engine    .engine .plan   tensorrt     build
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecxr.core.errors import BundleError


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of model file a bundle can hold."""

    key: str  #: bundle.json "artifacts" key (engines are listed under "engines" instead)
    precision: str | None  #: fp32 / fp16 / int8; None where the file says (an engine's sidecar)
    filename: str | None  #: default name inside the bundle; None where it is derived (engines)
    suffixes: tuple[str, ...]  #: file suffixes of this kind (lower case)
    backend: str  #: runner name that loads it
    made_by: str  #: the pipeline stage (and `edgecxr` command) that writes it


KINDS: tuple[ArtifactKind, ...] = (
    ArtifactKind("keras", "fp32", "model.keras", (".keras",), "keras", "train"),
    ArtifactKind("onnx_fp32", "fp32", "model.onnx", (".onnx",), "onnxruntime", "export"),
    ArtifactKind("onnx_fp16", "fp16", "model.fp16.onnx", (".onnx",), "onnxruntime", "export"),
    ArtifactKind("onnx_int8", "int8", "model.int8.onnx", (".onnx",), "onnxruntime", "calibrate"),
    ArtifactKind("engine", None, None, (".engine", ".plan"), "tensorrt", "build"),
)

BY_KEY: dict[str, ArtifactKind] = {k.key: k for k in KINDS}

#: bundle.json "artifacts" keys and their default file names (the kinds stored under a fixed name)
BUNDLE_FILES: dict[str, str] = {k.key: k.filename for k in KINDS if k.filename}

#: artifacts a workstation deploys (what a registered or shipped model may hold)
DEPLOYABLE: tuple[str, ...] = tuple(k.key for k in KINDS if k.backend == "onnxruntime")

#: precisions, in the order of preference for a reduced-precision deployment
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

#: largest batch any command accepts (engine profiles, benchmarks, inference)
MAX_BATCH = 256


def kind(key: str) -> ArtifactKind:
    """The row for `key`; BundleError naming the known keys otherwise."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise BundleError(f"unknown artifact {key!r}; known: {', '.join(BY_KEY)}") from None


def onnx_key(precision: str) -> str:
    """Bundle key of the ONNX file of `precision` ("int8" -> "onnx_int8")."""
    for k in KINDS:
        if k.backend == "onnxruntime" and k.precision == precision:
            return k.key
    raise BundleError(f"no ONNX artifact has precision {precision!r}; known: {', '.join(PRECISIONS)}")


def suffixes(backend: str) -> tuple[str, ...]:
    """File suffixes a backend loads."""
    return tuple(dict.fromkeys(s for k in KINDS if k.backend == backend for s in k.suffixes))


def backend_for(path: str | Path) -> str:
    """Runner name for an artifact file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for k in KINDS:
        if suffix in k.suffixes:
            return k.backend
    known = sorted({s for k in KINDS for s in k.suffixes})
    raise BundleError(f"{path}: no backend runs '{suffix}' files (known: {', '.join(known)})")


def is_engine(path: str | Path) -> bool:
    return Path(path).suffix.lower() in BY_KEY["engine"].suffixes
