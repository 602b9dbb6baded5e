"""One schema for the files that describe a model: bundle.json, ONNX metadata_props, engine sidecars.

Why: the runtime acts on what these files say (which class an output column is, how pixels are
scaled, which file to load and what its sha256 must be), and each of them can be hand-edited,
half-synced, replaced or hostile. So every value the runtime acts on is checked here, when the
file is read, and a bad one is a `BundleError` with one line naming the file and the field,
instead of a TypeError in cv2, a silently relabelled prediction or a RecursionError in `json`.

The three files share the facts in `ModelFacts` (classes, preprocessing, model, precision); each
is parsed by the same rules and the runtime compares them (`ModelFacts.differences`), so a
reordered class list or a model file from another bundle is refused at load.

Plain dataclasses and explicit checks rather than a schema library (pydantic, jsonschema): the
rules are few and the runtime must install on a scanner-side workstation with its core
dependencies only; a new dependency would not earn its place for ~100 lines of checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, cast

from edgecxr.core.artifacts import PRECISIONS
from edgecxr.core.errors import BundleError
from edgecxr.core.spec import PreprocessSpec

#: bundle.json identity (re-exported by edgecxr.core.bundle)
FORMAT = "edgecxr-bundle"
FORMAT_VERSION = 1
#: engine sidecar identity (re-exported by edgecxr.core.metadata)
SIDECAR_FORMAT = "edgecxr-engine"
SIDECAR_VERSION = 1

#: Deepest JSON nesting accepted (edgecxr writes at most 6 levels); deeper is refused as hostile.
MAX_JSON_DEPTH = 32
#: Largest JSON file read (bundle.json is tens of kB; a sidecar a few kB).
MAX_JSON_BYTES = 32 << 20
#: At most this many classes, each name at most this long.
MAX_CLASSES, MAX_NAME = 1000, 200

_SHA256 = re.compile(r"[0-9a-f]{64}")


# ------------------------------------------------------------------------------------------------
# JSON with limits
# ------------------------------------------------------------------------------------------------
def parse_json(text: str | bytes, where: str) -> Any:
    """Decode JSON text; corrupt, too deep or too large -> one-line BundleError naming `where`.

    json.loads recurses once per nesting level; a file of 100 000 '[' raises RecursionError (not a
    ValueError), which is caught here, and anything that parses deeper than MAX_JSON_DEPTH is
    refused before a caller walks it.
    """
    if len(text) > MAX_JSON_BYTES:
        raise BundleError(f"{where}: {len(text)} bytes of JSON is more than the {MAX_JSON_BYTES >> 20} MiB accepted")
    try:
        data = json.loads(text)
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deeply to read (limit {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int too long
        raise BundleError(f"{where}: corrupt JSON: {_first_line(exc)}") from None
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise BundleError(f"{where}: JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    return data


def read_json_file(path: str | Path) -> Any:
    """parse_json of a file's bytes (size checked before reading it all)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise BundleError(f"{path}: {size} bytes is more than the {MAX_JSON_BYTES >> 20} MiB accepted for JSON")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_json(data, str(path))


def json_depth(value: Any) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # past the limit the answer is already "too deep"
            stack.extend((child, depth + 1) for child in children)
    return deepest


# ------------------------------------------------------------------------------------------------
# Field rules
# ------------------------------------------------------------------------------------------------
def show(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: repr, cut short (a hostile file may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _name(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME or not value.isprintable():
        raise BundleError(f"{where}: {field} must be a non-empty printable name (at most {MAX_NAME} characters), "
                          f"got {show(value)}")
    return value


def check_classes(value: Any, where: str, field: str = "classes") -> tuple[str, ...]:
    """A non-empty list of unique, non-empty class names (model output order)."""
    if not isinstance(value, list) or not value or len(value) > MAX_CLASSES:
        raise BundleError(f"{where}: '{field}' must be a non-empty list of class names (at most {MAX_CLASSES}), "
                          f"got {show(value)}")
    names = tuple(_name(v, where, f"{field}[{i}]") for i, v in enumerate(value))
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BundleError(f"{where}: '{field}' lists {name!r} twice; class names must be unique")
        seen.add(name)
    return names


def check_spec(value: Any, where: str) -> PreprocessSpec:
    """The preprocessing spec (its own rules live on PreprocessSpec), errors prefixed with `where`."""
    try:
        return PreprocessSpec.from_dict(value)
    except BundleError as exc:
        raise BundleError(f"{where}: {exc}") from None


def check_precision(value: Any, where: str, field: str = "precision") -> str:
    if value not in PRECISIONS:
        raise BundleError(f"{where}: {field} must be one of {', '.join(PRECISIONS)}, got {show(value)}")
    return value


def check_sha256(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise BundleError(f"{where}: {field} must be a sha256 (64 lower-case hex digits), got {show(value)}")
    return value


def check_relative_path(value: Any, where: str, field: str) -> str:
    """A file name relative to the bundle folder that cannot climb out of it ('..', absolute, drive)."""
    if not isinstance(value, str) or not value or "\0" in value or "\\" in value:
        raise BundleError(f"{where}: {field} must be a file path inside the bundle, got {show(value)}")
    rel = PurePosixPath(value)
    if rel.is_absolute() or ".." in rel.parts or ":" in rel.parts[0]:
        raise BundleError(f"{where}: {field} = {show(value)} points outside the bundle; "
                          "artifact paths must be relative to the bundle folder, without '..'")
    return value


def _mapping(value: Any, where: str, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{where}: '{field}' must be an object, got {show(value)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------
# The facts every model description carries
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    """What bundle.json, an ONNX file's metadata and an engine sidecar each say about the model.

    None means "this file does not say" (an ONNX without metadata); anything stated must agree.
    """

    classes: tuple[str, ...] | None = None
    spec: PreprocessSpec | None = None
    model: str | None = None
    precision: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str, required: tuple[str, ...] = ()) -> ModelFacts:
        """Validate the facts present in `data` (keys classes, preprocess, model, precision)."""
        for key in required:
            if key not in data:
                raise BundleError(f"{where}: missing '{key}'")
        get = data.get
        return cls(
            classes=check_classes(get("classes"), where) if "classes" in data else None,
            spec=check_spec(get("preprocess"), where) if "preprocess" in data else None,
            model=_name(get("model"), where, "model") if "model" in data else None,
            precision=check_precision(get("precision"), where) if "precision" in data else None,
        )

    def differences(self, found: ModelFacts) -> list[tuple[str, str, str]]:
        """(field, this value, the found value) for each fact both state and that differs."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(found, f.name)
            if mine is None or theirs is None or mine == theirs:
                continue
            if f.name == "spec":
                a, b = mine.to_dict(), theirs.to_dict()
                out += [(f"preprocess.{k}", show(a[k]), show(b[k])) for k in a if a[k] != b[k]]
            elif f.name == "classes":
                out.append(("classes", show(list(mine), 120), show(list(theirs), 120)))
            else:
                out.append((f.name, show(mine), show(theirs)))
        return out


def ensure_same(expected: ModelFacts, expected_where: str, found: ModelFacts, found_where: str) -> None:
    """Refuse a model file whose own description differs from its bundle's (reordered classes, other
    preprocessing, another model or precision): running it would mislabel or misprepare inputs."""
    diffs = expected.differences(found)
    if diffs:
        said = "; ".join(f"{field} {theirs} where {expected_where} has {mine}" for field, mine, theirs in diffs)
        raise BundleError(f"{found_where}: {said}; refusing a model that would be mislabelled or fed other "
                          "pixels (restore the edited file or re-export the model)")


# ------------------------------------------------------------------------------------------------
# bundle.json
# ------------------------------------------------------------------------------------------------
def check_bundle(meta: Any, path: Path) -> ModelFacts:
    """Validate the bundle.json sections the runtime and every stage act on; returns its facts."""
    where = str(path)
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: not an edgecxr bundle (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{where}: not an edgecxr bundle (format={show(meta.get('format'))})")
    version = meta.get("format_version", 0)
    if not _is_int(version):
        raise BundleError(f"{where}: corrupt bundle: format_version {show(version)} is not an integer")
    if version > FORMAT_VERSION:
        raise BundleError(f"{where}: bundle format {version} is newer than this edgecxr ({FORMAT_VERSION}); upgrade")
    facts = ModelFacts.parse({k: v for k, v in meta.items() if k != "precision"}, where,
                             required=("model", "classes", "preprocess"))
    shape = list(cast(PreprocessSpec, facts.spec).input_shape)
    if "input_shape" in meta and meta["input_shape"] != shape:
        raise BundleError(f"{where}: input_shape {show(meta['input_shape'])} disagrees with preprocess ({shape})")
    for key, rel in _mapping(meta.get("artifacts", {}), where, "artifacts").items():
        check_relative_path(rel, where, f"artifacts.{key}")
    for key, digest in _mapping(meta.get("artifact_sha256", {}), where, "artifact_sha256").items():
        check_sha256(digest, where, f"artifact_sha256.{key}")
    for key, entry in _mapping(meta.get("gate", {}), where, "gate").items():
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: gate.{key} must be an object (an accuracy-gate verdict), got {show(entry)}")
        if entry.get("passed") is not None and not isinstance(entry["passed"], bool):
            raise BundleError(f"{where}: gate.{key}.passed must be true or false, got {show(entry['passed'])}")
    for key, entry in _mapping(meta.get("engines") or {}, where, "engines").items():
        if not isinstance(entry, (dict, str)):
            raise BundleError(f"{where}: engines.{key} must be an object of build facts, got {show(entry)}")
        if isinstance(entry, dict) and entry.get("sha256") is not None:
            check_sha256(entry["sha256"], where, f"engines.{key}.sha256")
    return facts


# ------------------------------------------------------------------------------------------------
# Engine sidecar
# ------------------------------------------------------------------------------------------------
def check_sidecar(data: Any, path: Path) -> ModelFacts:
    """Validate an engine sidecar (`<engine>.json`); returns its facts."""
    where = str(path)
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise BundleError(f"{where}: not an edgecxr engine sidecar (format={show(found)})")
    version = data.get("format_version", 0)
    if not _is_int(version):
        raise BundleError(f"{where}: sidecar format_version {show(version)} is not an integer")
    if version > SIDECAR_VERSION:
        raise BundleError(f"{where}: sidecar format {version} is newer than this edgecxr; upgrade")
    for key in ("engine", "tensorrt", "gpu", "precision", "classes", "preprocess", "io"):
        if key not in data:
            raise BundleError(f"{where}: sidecar is missing '{key}'")
    facts = ModelFacts.parse(data, where)
    spec, classes = cast(PreprocessSpec, facts.spec), cast(tuple, facts.classes)
    check_sha256(_mapping(data["engine"], where, "engine").get("sha256"), where, "engine.sha256")
    _name(data["tensorrt"], where, "tensorrt")
    gpu = _mapping(data["gpu"], where, "gpu")
    _name(gpu.get("name"), where, "gpu.name")
    _name(str(gpu.get("compute_capability") or ""), where, "gpu.compute_capability")
    dla = data.get("dla_core")
    if dla is not None and (not _is_int(dla) or dla < 0):
        raise BundleError(f"{where}: dla_core must be null or a DLA core number, got {show(dla)}")
    _check_io(_mapping(data["io"], where, "io"), where, spec, len(classes))
    return facts


def _check_io(io: dict[str, Any], where: str, spec: PreprocessSpec, n_classes: int) -> None:
    """The engine's tensors: one input of shape (N, *spec.input_shape); an output of n_classes."""
    inputs, outputs = io.get("inputs"), io.get("outputs", [])
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BundleError(f"{where}: io.inputs must list the engine's one input tensor, got {show(inputs)}")
    shape = inputs[0].get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or not all(_is_int(d) for d in shape):
        raise BundleError(f"{where}: io.inputs[0].shape must be 4 integers (N, H, W, C), got {show(shape)}")
    if tuple(shape[1:]) != spec.input_shape:
        raise BundleError(f"{where}: io.inputs[0].shape {shape} disagrees with preprocess (N, {spec.input_shape})")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs) or len(outputs) > 1:
        raise BundleError(f"{where}: io.outputs must list the engine's output tensor, got {show(outputs)}")
    for out in outputs:
        oshape = out.get("shape")
        if not isinstance(oshape, list) or not oshape or not all(_is_int(d) for d in oshape):
            raise BundleError(f"{where}: io.outputs[0].shape must be a list of integers, got {show(oshape)}")
        if oshape[-1] not in (-1, n_classes):
            raise BundleError(f"{where}: io.outputs[0].shape {oshape} has {oshape[-1]} classes, 'classes' lists {n_classes}")
