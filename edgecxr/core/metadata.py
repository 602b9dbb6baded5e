"""What the runtime reads from a model file: ONNX metadata_props and the TensorRT engine sidecar.

Written by the export and build stages, read by the runtime; kept here, below both, so the runtime
never imports a stage to learn the format. Everything read is validated by edgecxr.core.schema
(the same rules as bundle.json), so a hand-edited sidecar or metadata entry is a one-line
BundleError naming the file and the field, never a KeyError or a silently wrong class order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecxr.core.bundle import FORMAT, FORMAT_VERSION, Bundle
from edgecxr.core.errors import BundleError, EngineMismatchError
from edgecxr.core.fileutil import sha256_file
from edgecxr.core.schema import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    ModelFacts,
    check_sidecar,
    parse_json,
    read_json_file,
)
from edgecxr.core.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["SIDECAR_FORMAT", "SIDECAR_VERSION"]  # the sidecar's identity lives with its schema

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probs"

META_CLASSES = "edgecxr.classes"  # JSON list, model output order
META_PREPROCESS = "edgecxr.preprocess"  # JSON PreprocessSpec.to_dict()
META_MODEL = "edgecxr.model"  # "coronet" / "cnn-lstm"
META_BUNDLE_FORMAT = "edgecxr.bundle_format"  # "edgecxr-bundle/1"
META_VERSION = "edgecxr.version"  # edgecxr version that wrote the file
META_PRECISION = "edgecxr.precision"  # "fp32" / "fp16" / "int8"
META_CALIBRATION = "edgecxr.calibration_sha256"  # INT8 only: sha256 of the calibration manifest

#: metadata_props holding JSON, and the fact (schema.ModelFacts / bundle.json key) each entry states
_JSON_PROPS = (META_CLASSES, META_PREPROCESS)
_FACTS = {META_CLASSES: "classes", META_PREPROCESS: "preprocess", META_MODEL: "model", META_PRECISION: "precision"}


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add or replace metadata_props entries (keys not in `entries` are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*keep, *entries.items()]:
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)


def bundle_metadata(bundle: Bundle, precision: str) -> dict[str, str]:
    """The metadata_props every exported file of `bundle` carries."""
    return {
        META_CLASSES: json.dumps(bundle.classes),
        META_PREPROCESS: json.dumps(bundle.spec.to_dict(), sort_keys=True),
        META_MODEL: bundle.model,
        META_BUNDLE_FORMAT: f"{FORMAT}/{FORMAT_VERSION}",
        META_VERSION: __version__,
        META_PRECISION: precision,
    }


def read_metadata(model: str | Path | onnx.ModelProto) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values (classes, preprocess) decoded (depth-limited).

    Loads without external data so reading the metadata of a large model stays cheap.
    """
    import onnx

    where = "ONNX metadata"
    if not isinstance(model, onnx.ModelProto):
        where = f"{model} (ONNX metadata)"
        model = onnx.load(str(model), load_external_data=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props}, where)


def decode_metadata(props: Mapping[str, str], where: str) -> dict[str, Any]:
    """metadata_props (key -> string, as onnx or an onnxruntime session gives them), JSON values decoded."""
    return {k: parse_json(v, f"{where} {k}") if k in _JSON_PROPS else v for k, v in props.items()}


def onnx_facts(props: Mapping[str, Any], where: str) -> ModelFacts:
    """The facts decoded metadata states, validated like bundle.json (unique classes, spec in range...)."""
    return ModelFacts.parse({name: props[key] for key, name in _FACTS.items() if key in props}, where)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """classes / preprocess / model / precision from an ONNX file's metadata_props (written by `edgecxr export`),
    validated by the same schema as bundle.json."""
    try:
        props = read_metadata(path)
    except BundleError:
        raise
    except Exception as exc:  # onnx raises DecodeError and friends for non-ONNX files
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{path}: not a readable ONNX model ({why})") from exc
    onnx_facts(props, f"{path} (ONNX metadata)")
    return {name: props[key] for key, name in _FACTS.items() if key in props}


# ------------------------------------------------------------------------------------------------
# Sidecar and compatibility
# ------------------------------------------------------------------------------------------------
def sidecar_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The engine's sidecar, validated; an engine without one is refused (nothing says what GPU or TRT built it)."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise BundleError(
            f"{engine}: no sidecar {path.name}; edgecxr only runs engines it built "
            "(rebuild with `edgecxr build -m BUNDLE --precision fp16|int8`)"
        )
    data = read_json_file(path)
    check_sidecar(data, path)
    return data


def sidecar_facts(sidecar: dict[str, Any], engine: str | Path) -> ModelFacts:
    """The facts a (validated) sidecar states, to compare with its bundle's."""
    return ModelFacts.parse(sidecar, str(sidecar_path(engine)))


def verify_engine(engine: str | Path, sidecar: dict[str, Any], recorded: str | None = None) -> str:
    """Refuse an engine whose sha256 differs from its sidecar's (or the sidecar's from `recorded`,
    bundle.json's); returns the sha256.

    Runs before TensorRT is imported: a replaced or truncated engine never reaches the
    deserializer, and an engine is never run under the facts of another engine's sidecar.
    """
    expected = sidecar["engine"]["sha256"]
    name = sidecar_path(engine).name
    if recorded is not None and recorded != expected:
        raise BundleError(f"{engine}: bundle.json records another sha256 than {name} (engine or sidecar replaced); "
                          f"rebuild it with `{rebuild_command(engine, sidecar)}`")
    if sha256_file(engine) != expected:
        raise BundleError(f"{engine}: sha256 does not match {name} (file changed after it was built); "
                          f"rebuild it with `{rebuild_command(engine, sidecar)}`")
    return expected


def make_sidecar(
    *,
    bundle_meta: dict[str, Any],
    engine_file: str,
    engine_sha256: str,
    precision: str,
    onnx_file: str,
    onnx_sha256: str,
    platform: dict[str, Any],
    io: dict[str, Any],
    profile: Any,  # a stages.engine.profile.BuildProfile (to_dict(), dla_core)
    build_seconds: float,
    strongly_typed: bool,
    built_at: str | None = None,
) -> dict[str, Any]:
    """Everything needed to decide later whether this engine may run somewhere, and where it came from."""
    calibration = bundle_meta.get("calibration") or {}
    gpu = platform.get("gpu") or {}
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "engine": {"file": engine_file, "sha256": engine_sha256},
        "model": bundle_meta.get("model"),
        "classes": list(bundle_meta.get("classes", [])),
        "preprocess": dict(bundle_meta.get("preprocess", {})),
        "precision": precision,
        "strongly_typed": strongly_typed,
        "tensorrt": str(platform["tensorrt"]),
        "gpu": {"name": gpu.get("name"), "compute_capability": gpu.get("compute_capability")},
        "cuda": {k: gpu.get(k) for k in ("cuda_runtime", "cuda_driver", "binding")},
        "dla_core": profile.dla_core,
        "onnx": {"file": onnx_file, "sha256": onnx_sha256},
        "calibration": {
            "manifest_sha256": calibration.get("manifest_sha256"),
            "method": calibration.get("method"),
        }
        if precision == "int8"
        else None,
        "io": io,
        "profile": profile.to_dict(),
        "built_at": built_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(float(build_seconds), 2),
        "edgecxr_version": __version__,
    }


def _norm(name: Any) -> str:
    return " ".join(str(name or "").lower().split())


def check_compatibility(sidecar: dict[str, Any], platform: dict[str, Any]) -> list[str]:
    """Why the engine cannot run on `platform` ({'tensorrt': ver, 'gpu': {name, compute_capability}}); [] = OK.

    An engine runs only on the TensorRT version that built it (same full version: TensorRT refuses
    other versions unless built version-compatible, which edgecxr does not do) and on the same GPU
    model (kernels are chosen for its SM count and memory; another model of the same compute
    capability may load but is not supported by NVIDIA), so both must match.
    """
    reasons = []
    built_trt, here_trt = str(sidecar.get("tensorrt")), str(platform.get("tensorrt"))
    if built_trt != here_trt:
        reasons.append(f"TensorRT {built_trt} built it, this machine has TensorRT {here_trt}")
    built_gpu, here_gpu = sidecar.get("gpu") or {}, platform.get("gpu") or {}
    if _norm(built_gpu.get("name")) != _norm(here_gpu.get("name")):
        reasons.append(f"it was built on '{built_gpu.get('name')}', this GPU is '{here_gpu.get('name')}'")
    elif str(built_gpu.get("compute_capability")) != str(here_gpu.get("compute_capability")):
        reasons.append(
            f"built for compute capability {built_gpu.get('compute_capability')}, "
            f"this GPU is {here_gpu.get('compute_capability')}"
        )
    return reasons


def rebuild_command(engine: str | Path, sidecar: dict[str, Any]) -> str:
    """`edgecxr build ...` that recreates this engine here (bundle = engines/'s parent when it has bundle.json)."""
    engine = Path(engine)
    bundle = "BUNDLE"
    for parent in (engine.parent, engine.parent.parent):
        if (parent / "bundle.json").is_file():
            bundle = str(parent)
            break
    cmd = f"edgecxr build -m {bundle} --precision {sidecar.get('precision', 'fp16')}"
    prof = sidecar.get("profile") or {}
    if prof.get("name") and prof.get("name") != "default":
        cmd += f" --profile {prof['name']}"
    return cmd


def ensure_compatible(engine: str | Path, sidecar: dict[str, Any], platform: dict[str, Any]) -> None:
    """Raise EngineMismatchError naming both sides and the rebuild command when the engine cannot run here."""
    reasons = check_compatibility(sidecar, platform)
    if reasons:
        raise EngineMismatchError(
            f"{engine}: engine does not match this machine: {'; '.join(reasons)}. "
            f"Rebuild it here with: {rebuild_command(engine, sidecar)}"
        )
