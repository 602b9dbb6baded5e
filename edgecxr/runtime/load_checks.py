"""What `Classifier.load` checks before and right after a runtime reads a model file.

Why a module of its own: the checks are the product's promise that the file that runs is the one
that was gated (sha256 against bundle.json or the engine's sidecar, before any runtime parses it)
and that it says the same about itself (classes, preprocessing, precision, input/output shapes)
as the bundle does; the Classifier only sequences them. A file given directly (not a bundle)
yields its classes and preprocessing here too (`FILE_MODELS`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecxr.core.errors import BundleError
from edgecxr.core.metadata import (
    decode_metadata,
    onnx_facts,
    read_onnx_metadata,
    read_sidecar,
    sidecar_facts,
    sidecar_path,
    verify_engine,
)
from edgecxr.core.schema import ensure_same
from edgecxr.core.spec import PreprocessSpec
from edgecxr.runtime.select import ArtifactChoice

if TYPE_CHECKING:  # pragma: no cover
    from edgecxr.core.bundle import Bundle


def is_rejected(path: Path) -> bool:
    """A file `core.publish.rejected_path` named: model.int8.rejected.onnx, x.rejected.engine."""
    return Path(path).stem.endswith(".rejected")


def _engine_file(path: Path) -> tuple[list[str], PreprocessSpec, ArtifactChoice]:
    side = read_sidecar(path)
    return side["classes"], PreprocessSpec.from_dict(side["preprocess"]), ArtifactChoice(
        "tensorrt", path, side["precision"], "TensorRT engine given")


def _onnx_file(path: Path) -> tuple[list[str], PreprocessSpec, ArtifactChoice]:
    from edgecxr.core.bundle import BUNDLE_FILE, Bundle

    meta = read_onnx_metadata(path)
    if "classes" not in meta or "preprocess" not in meta:
        if not (path.parent / BUNDLE_FILE).is_file():
            raise BundleError(f"{path}: ONNX has no edgecxr metadata (classes, preprocessing) and no {BUNDLE_FILE} beside it")
        bmeta = Bundle.load(path.parent).meta
        meta.setdefault("classes", bmeta["classes"])
        meta.setdefault("preprocess", bmeta["preprocess"])
    prec = str(meta.get("precision") or "fp32")
    return meta["classes"], PreprocessSpec.from_dict(meta["preprocess"]), ArtifactChoice(
        "onnxruntime", path, prec, "ONNX file given")


def _keras_file(path: Path) -> tuple[list[str], PreprocessSpec, ArtifactChoice]:
    from edgecxr.core.bundle import Bundle

    bundle = Bundle.load(path.parent)
    return bundle.classes, bundle.spec, ArtifactChoice("keras", path, "fp32", "Keras model given")


#: how a model file given directly (not a bundle) yields its classes, spec and choice, by backend
FILE_MODELS = {"tensorrt": _engine_file, "onnxruntime": _onnx_file, "keras": _keras_file}


def owning_bundle(path: Path) -> Bundle | None:
    """The bundle a model file given directly belongs to (bundle.json lists it), else None.

    So `Classifier.load("runs/x/model.int8.onnx")` gets the same checks as loading `runs/x`.
    Engines sit one folder down (engines/), hence the grandparent.
    """
    from edgecxr.core.bundle import BUNDLE_FILE, Bundle

    here = path.resolve()
    for folder in dict.fromkeys((path.parent, path.parent.parent)):
        if not (folder / BUNDLE_FILE).is_file():
            continue
        bundle = Bundle.load(folder)
        listed = [*(bundle.meta.get("artifacts") or {}).values(), *(bundle.meta.get("engines") or {})]
        if any(isinstance(rel, str) and (folder / rel).resolve() == here for rel in listed):
            return bundle
    return None


def verify_before_load(bundle: Bundle | None, choice: ArtifactChoice) -> tuple[str, str | None]:
    """Check the chosen file's sha256 (and an engine sidecar's facts) before any runtime reads it.

    Returns what was verified (for backend_info) and the verified sha256 (None when nothing
    records one); raises BundleError naming the file otherwise.
    """
    from edgecxr.runtime import store

    if choice.backend == "tensorrt":
        side = read_sidecar(choice.path)
        if bundle is None:
            sha = verify_engine(choice.path, side)
        else:
            sha = store.verify_artifact(bundle, choice.path)
            ensure_same(bundle.facts, str(bundle.path), sidecar_facts(side, choice.path), str(sidecar_path(choice.path)))
        return "sha256 matches its sidecar", sha
    if bundle is None:
        return "not verified (no bundle.json records its sha256)", None
    sha = store.verify_artifact(bundle, choice.path)
    if sha is None:
        return "not verified (bundle.json records no sha256 for it)", None
    return "sha256 matches bundle.json", sha


def check_loaded(runner: Any, bundle: Bundle | None, choice: ArtifactChoice, classes: list[str],
                  spec: PreprocessSpec) -> None:
    """The loaded model's declared shapes and embedded metadata against the bundle's, right after load.

    A mismatch would otherwise be an onnxruntime traceback at the first batch, or (class order,
    preprocessing) no error at all: predictions relabelled or computed on differently scaled pixels.
    """
    where = str(choice.path)
    inp, out = runner.io_shapes()
    if inp is not None and (
        len(inp) != 4 or any(_fixed(d) and d != n for d, n in zip(inp[1:], spec.input_shape, strict=True))
    ):
        raise BundleError(f"{where}: the model's input shape {_dims(inp)} does not match the preprocessing's "
                          f"(N, {', '.join(map(str, spec.input_shape))}) from {spec.id}")
    if out is not None and (len(out) != 2 or (_fixed(out[-1]) and out[-1] != len(classes))):
        raise BundleError(f"{where}: the model's output shape {_dims(out)} does not match its {len(classes)} "
                          f"classes {classes}")
    props = runner.embedded_metadata()
    if bundle is not None and props:
        label = f"{where} (ONNX metadata)"
        found = onnx_facts(decode_metadata(props, label), label)
        ensure_same(replace(bundle.facts, precision=choice.precision), str(bundle.path), found, label)


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _dims(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) if _fixed(d) else "N" for d in shape) + ")"
