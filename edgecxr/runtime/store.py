"""Model names: the reference models shipped inside the package, and bundles the user registers.

Why a registry: `edgecxr infer image.png` must work on a fresh install, and a name
("coronet", "cnn-lstm", or one the user registered) must mean the same thing in the CLI and in
`Classifier.load`. A name resolves to a bundle directory; anything that exists on disk is taken
as a path first, so `--model runs/x` keeps working.

Where models are found, in order:
  1. the reference models in `edgecxr/reference/<name>/` (deployable artifacts only, with the
     sha256 of each recorded in bundle.json and checked when loaded);
  2. the user's models folder: `$EDGECXR_MODELS` if set, else `$XDG_DATA_HOME/edgecxr/models`
     (`~/.local/share/edgecxr/models`); `edgecxr models add BUNDLE --name NAME` copies a bundle's
     deployable files there. A user model may not take a reference model's name.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import BUNDLE_FILES, DEPLOYABLE, is_engine, kind
from edgecxr.core.bundle import BUNDLE_FILE, Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file
from edgecxr.core.metadata import read_sidecar, verify_engine

DEFAULT_MODEL = "coronet"
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
ENV_MODELS = "EDGECXR_MODELS"
#: Artifacts a registered copy keeps (the Keras file and training checkpoints stay behind).
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    source: str  #: "reference" or "user"


def user_models_dir() -> Path:
    env = os.environ.get(ENV_MODELS)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgecxr" / "models"


def _entries(folder: Path, source: str) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    return [ModelEntry(d.name, d, source) for d in sorted(folder.iterdir())
            if d.is_dir() and (d / BUNDLE_FILE).is_file() and _NAME.match(d.name)]


def _overlay_of(entry: ModelEntry) -> str | None:
    try:
        return Bundle.load(entry.path).meta.get("overlay_of")
    except BundleError:
        return None


def available() -> dict[str, ModelEntry]:
    """Every model name -> entry; reference models first, then user models (which never shadow one,
    except the writable copy `edgecxr build` makes of a reference model to hold its engines)."""
    found: dict[str, ModelEntry] = {e.name: e for e in _entries(REFERENCE_DIR, "reference")}
    for entry in _entries(user_models_dir(), "user"):
        if entry.name not in found:
            found[entry.name] = entry
        elif _overlay_of(entry) == entry.name:
            found[entry.name] = ModelEntry(entry.name, entry.path, "reference+local")
    return found


def is_reference(path: Path) -> bool:
    try:
        return path.resolve().parent == REFERENCE_DIR
    except OSError:
        return False


def writable(path: Path) -> Path:
    """A bundle that a stage may write into: a reference model (inside the installed package) is
    first copied to the user models folder under its own name, and that copy is used from then on."""
    if not is_reference(path):
        return path
    dest = user_models_dir() / path.name
    if dest.is_dir() and _overlay_of(ModelEntry(path.name, dest, "user")) == path.name:
        return dest
    if dest.exists():
        raise BundleError(f"{dest} exists and is not a copy of the reference model {path.name}; move it away")
    tmp = dest.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(path, tmp)
    copy = Bundle.load(tmp)
    copy.update(overlay_of=path.name)
    os.replace(tmp, dest)
    return dest


def resolve(model: str | Path | None) -> Path:
    """A path that exists, else a model name -> its bundle directory (None: the default model)."""
    if model is None:
        model = DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.exists():
        return path
    entries = available()
    if str(model) in entries:
        return entries[str(model)].path
    names = ", ".join(entries) or "none installed"
    raise BundleError(f"{model}: no such file or folder, and not a model name (models: {names})")


def verify_artifact(bundle: Bundle, path: Path) -> str | None:
    """Refuse an artifact whose sha256 differs from the one recorded for it; returns the verified sha256.

    An ONNX or Keras file is checked against bundle.json (`Bundle.recorded_sha256`), an engine
    against its sidecar and, where bundle.json lists it with a sha256, against that too. None when
    nothing records a hash for the file (a bundle assembled by hand): it is loaded unverified and
    Classifier.backend_info says so. Hashes the file once (up to ~100 MB: well under a second).
    """
    here = path.resolve()
    if is_engine(path):
        entry = next((v for k, v in (bundle.meta.get("engines") or {}).items()
                      if (bundle.dir / k).resolve() == here), None)
        recorded = entry.get("sha256") if isinstance(entry, dict) else None
        return verify_engine(path, read_sidecar(path), recorded)
    key = next((k for k, v in (bundle.meta.get("artifacts") or {}).items()
                if isinstance(v, str) and (bundle.dir / v).resolve() == here), None)
    expected = bundle.recorded_sha256(key) if key else None
    if expected is None:
        return None
    if sha256_file(path) != expected:
        shipped = is_reference(bundle.dir) or "copied_from" in bundle.meta
        fix = ("reinstall edgecxr or re-register the model (`edgecxr models add`)" if shipped
               else f"re-run `edgecxr {kind(key).made_by}` to remake it" if key in BUNDLE_FILES
               else "remake it")
        raise BundleError(f"{path}: sha256 does not match {bundle.path} (file changed after it was recorded); {fix}")
    return expected


def record_hashes(bundle: Bundle, keys: tuple[str, ...] = DEPLOYABLE) -> dict[str, str]:
    """Write the sha256 of the bundle's deployable artifacts into bundle.json and return them."""
    hashes = {}
    for key in keys:
        path = bundle.artifact(key, must_exist=False)
        if path is not None:
            hashes[key] = sha256_file(path)
    bundle.update(artifact_sha256=hashes)
    return hashes


def add(bundle_dir: str | Path, name: str, replace: bool = False) -> ModelEntry:
    """Copy a bundle's deployable artifacts into the user models folder under `name`."""
    if not _NAME.match(name):
        raise BundleError(f"model name {name!r}: use 1-64 of a-z, 0-9, '.', '_', '-' (starting with a letter or digit)")
    if (REFERENCE_DIR / name / BUNDLE_FILE).is_file():
        raise BundleError(f"{name} is a reference model's name; choose another")
    dest = user_models_dir() / name
    copy_deployable(bundle_dir, dest, DEPLOYABLE, replace=replace)
    return ModelEntry(name, dest, "user")


def copy_deployable(bundle_dir: str | Path, dest: Path, keys: tuple[str, ...], replace: bool = False,
                    extra_files: tuple[str, ...] = ()) -> Bundle:
    """Copy bundle.json and the artifacts `keys` (those present) into `dest`, atomically, with their sha256.

    Engines are not copied (they belong to the GPU they were built on); `extra_files` (e.g. the
    stored reference probabilities) are copied when present.
    """
    src = Bundle.load(bundle_dir)
    keep = {k: src.artifact(k, must_exist=False) for k in keys}
    keep = {k: p for k, p in keep.items() if p is not None}
    if not keep:
        raise BundleError(f"{src.dir}: none of {list(keys)} to copy; run `edgecxr export` first")
    if dest.exists() and not replace:
        raise BundleError(f"{dest} exists; choose another name or replace it")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in keep.values():
        shutil.copy2(path, tmp / path.name)
    for name in extra_files:
        if (src.dir / name).is_file():
            shutil.copy2(src.dir / name, tmp / name)
    meta = dict(src.meta, artifacts={k: p.name for k, p in keep.items()})
    meta.pop("engines", None)
    meta["copied_from"] = {"bundle": src.dir.name, "git_commit": src.meta.get("git_commit")}
    copy = Bundle(tmp, meta)
    record_hashes(copy)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return Bundle.load(dest)


def describe(entry: ModelEntry) -> dict[str, Any]:
    """What `edgecxr models` shows for one model (no hashing: sha256 values are the recorded ones)."""
    try:
        bundle = Bundle.load(entry.path)
    except BundleError as exc:
        return {"name": entry.name, "source": entry.source, "location": str(entry.path), "error": str(exc)}
    meta = bundle.meta
    artifacts = {}
    for key, rel in (meta.get("artifacts") or {}).items():
        path = bundle.dir / rel
        if path.is_file():
            artifacts[key] = {"file": rel, "bytes": path.stat().st_size,
                              "sha256": (meta.get("artifact_sha256") or {}).get(key)}
    test = (meta.get("metrics") or {}).get("test") or {}
    covid = (test.get("per_class") or {}).get("covid") or {}
    return {
        "name": entry.name,
        "source": entry.source,
        "model": bundle.model,
        "classes": bundle.classes,
        "input_shape": meta.get("input_shape"),
        "precisions": sorted(k.split("_", 1)[1] for k in artifacts if k.startswith("onnx_")),
        "artifacts": artifacts,
        "test": {"n": test.get("n"), "accuracy": test.get("accuracy"), "covid_sensitivity": covid.get("recall")}
        if test else None,
        "bytes": sum(a["bytes"] for a in artifacts.values()),
        "location": str(entry.path),
    }
