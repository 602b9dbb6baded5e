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

Registering is all or nothing: every file the bundle lists is checked against the sha256 it
records before anything is written (a file changed after it was recorded is refused, not hashed
anew into a trusted copy); the copy is built in a hidden folder inside the models folder and
renamed into place, under the models folder's lock, so a full disk, a kill or a second `models add`
at the same time never leaves a half-written model under a name.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import BUNDLE_FILES, DEPLOYABLE, is_engine, kind
from edgecxr.core.bundle import BUNDLE_FILE, HASHES, STORED_REFERENCE, Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file
from edgecxr.core.metadata import read_sidecar, verify_engine
from edgecxr.runtime.models_folder import copy_file as _copy_file
from edgecxr.runtime.models_folder import publish, publishing

DEFAULT_MODEL = "coronet"
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
ENV_MODELS = "EDGECXR_MODELS"
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

    def is_copy() -> bool:
        return dest.is_dir() and _overlay_of(ModelEntry(path.name, dest, "user")) == path.name

    if is_copy():
        return dest

    def build(tmp: Path) -> None:
        shutil.copytree(path, tmp, dirs_exist_ok=True)
        Bundle.load(tmp).update(overlay_of=path.name)

    with publishing(dest):
        if is_copy():  # made by another process while this one waited for the lock
            return dest
        if dest.exists():
            raise BundleError(f"{dest} exists and is not a copy of the reference model {path.name}; move it away")
        publish(dest, build)
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
    hint = ""
    if not any(e.source.startswith("reference") for e in entries.values()):  # installed from the edgecxr wheel alone
        hint = "; the reference models are wheels of their own: pip install 'edgecxr[models]' (or `make dist`'s edgecxr_model_*.whl)"
    raise BundleError(f"{model}: no such file or folder, and not a model name (models: {names}){hint}")


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


@dataclass(frozen=True)
class ListedFile:
    """A file bundle.json lists, with the sha256 it records for it (None: it records none)."""

    field: str  #: where bundle.json lists it: "artifacts.onnx_fp16", "confidence.ood"
    rel: str  #: its path inside the bundle, as bundle.json writes it
    path: Path
    sha256: str | None
    key: str | None = None  #: the artifact key, for files of the artifact table


def listed_files(bundle: Bundle, keys: tuple[str, ...] = DEPLOYABLE) -> list[ListedFile]:
    """The files a deployed copy of `bundle` needs, from bundle.json's own listing.

    Two places list files: the artifact table ("artifacts", one row per kind in core.artifacts;
    only the kinds `keys` are taken: a registered model keeps its ONNX models, not the Keras file)
    and any section entry naming a file with its sha256 (`{"file": ..., "sha256": ...}`, e.g. the
    confidence fit's confidence.npz, which `infer` refuses to run without). Engines are left out:
    they belong to the GPU they were built on. A listed file that is missing is a BundleError: a
    copy without it would not load, or would load differently from the bundle.
    """
    found: list[ListedFile] = []
    for key, rel in (bundle.meta.get("artifacts") or {}).items():
        if key not in keys:
            continue
        path = bundle.inside(rel, f"artifacts.{key}")
        found.append(ListedFile(f"artifacts.{key}", rel, path, bundle.recorded_sha256(key), key))

    def walk(node: Any, field: str) -> None:
        if not isinstance(node, dict):
            return
        rel, digest = node.get("file"), node.get("sha256")
        if isinstance(rel, str) and rel and isinstance(digest, str) and digest:
            found.append(ListedFile(field, rel, bundle.inside(rel, f"{field}.file"), digest))
        for name, child in node.items():
            walk(child, f"{field}.{name}" if field else str(name))

    walk({k: v for k, v in bundle.meta.items() if k not in ("artifacts", HASHES, "engines")}, "")
    for item in found:
        try:
            mode = item.path.stat().st_mode
        except OSError:
            raise BundleError(f"{bundle.path}: {item.field} lists {item.rel}, which is missing") from None
        if not stat.S_ISREG(mode):  # a FIFO or device would block the hash below
            raise BundleError(f"{item.path}: not a regular file (listed in {bundle.path} as {item.field})")
    return found


def verify_listed(bundle: Bundle, files: list[ListedFile]) -> dict[str, str]:
    """Check each listed file against the sha256 bundle.json records for it, as loading does.

    Artifacts go through `verify_artifact` (the check `infer -m DIR` makes); a section's file is
    compared with its recorded sha256. Returns rel path -> verified sha256 (files with a recorded
    hash only). Raises BundleError naming the first file that differs.
    """
    verified: dict[str, str] = {}
    for item in files:
        if item.key is not None:
            digest = verify_artifact(bundle, item.path)
        else:
            digest = sha256_file(item.path)
            if digest != item.sha256:
                raise BundleError(f"{item.path}: sha256 does not match {bundle.path} ({item.field}; "
                                  "file changed after it was recorded)")
        if digest is not None:
            verified[item.rel] = digest
    return verified


def add(bundle_dir: str | Path, name: str, replace: bool = False,
        warn: Callable[[str], None] | None = None) -> ModelEntry:
    """Register a bundle under `name`: a verified copy of its deployable files in the user models folder.

    Nothing is registered unless every listed file matches the sha256 bundle.json records for it
    (a file without a recorded hash is hashed as found, and `warn` is told). An existing model of
    that name is kept unless `replace`; it is replaced atomically.
    """
    if not _NAME.match(name):
        raise BundleError(f"model name {name!r}: use 1-64 of a-z, 0-9, '.', '_', '-' (starting with a letter or digit)")
    if (REFERENCE_DIR / name / BUNDLE_FILE).is_file():
        raise BundleError(f"{name} is a reference model's name; choose another")
    dest = user_models_dir() / name
    try:
        copy = copy_deployable(bundle_dir, dest, DEPLOYABLE, replace=replace, extra_files=(STORED_REFERENCE,))
    except BundleError as exc:
        raise BundleError(f"{exc}; {name} not registered", params=exc.params) from None
    except OSError as exc:
        reason = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        raise BundleError(f"cannot register {name} in {dest.parent}: {reason}; {name} not registered") from None
    unrecorded = (copy.meta.get("copied_from") or {}).get("hashed_when_copied") or []
    if unrecorded and warn is not None:
        warn(f"warning: {Path(bundle_dir) / BUNDLE_FILE} records no sha256 for {', '.join(unrecorded)}; "
             "registered the files as found")
    return ModelEntry(name, dest, "user")


def copy_deployable(bundle_dir: str | Path, dest: Path, keys: tuple[str, ...], replace: bool = False,
                    extra_files: tuple[str, ...] = ()) -> Bundle:
    """Copy bundle.json and the files it lists for the artifacts `keys` into `dest`, verified, atomically.

    Every file `listed_files` names is checked against its recorded sha256 before the models folder
    is touched, and the bytes copied are hashed again as they are written (a file changed during
    the copy is refused too). `extra_files` (e.g. the stored reference probabilities, which
    bundle.json does not list) are copied when present. The copy is built in a hidden folder beside
    `dest` and renamed into place under the folder's lock (runtime/models_folder.py); any failure removes it.
    """
    src = Bundle.load(bundle_dir)
    files = listed_files(src, keys)
    if not any(f.key for f in files):
        raise BundleError(f"{src.dir}: none of {list(keys)} to copy; run `edgecxr export` first")
    if dest.exists() and not replace:
        raise BundleError(f"{dest} exists; choose another name or replace it", params=("name", "replace"))
    verified = verify_listed(src, files)
    extras = [src.dir / n for n in extra_files if (src.dir / n).is_file() and n not in {f.rel for f in files}]

    def build(tmp: Path) -> None:
        written: dict[str, str] = {}
        for item in files:
            if item.rel in written:
                continue
            digest = _copy_file(item.path, tmp / item.rel)
            want = verified.get(item.rel)
            if want is not None and digest != want:
                raise BundleError(f"{item.path}: changed while it was being copied (sha256 differs from {src.path})")
            written[item.rel] = digest
        for path in extras:
            _copy_file(path, tmp / path.name)
        kept = {f.key: f.rel for f in files if f.key}
        meta = dict(src.meta, artifacts=kept)
        meta[HASHES] = {k: written[rel] for k, rel in kept.items()}
        meta.pop("engines", None)
        meta["copied_from"] = {"bundle": src.dir.name, "git_commit": src.meta.get("git_commit")}
        unrecorded = sorted(f.key for f in files if f.key and f.rel not in verified)
        if unrecorded:
            meta["copied_from"]["hashed_when_copied"] = unrecorded
        Bundle(tmp, meta).save()

    with publishing(dest):
        if dest.exists() and not replace:  # registered by another process while this one waited
            raise BundleError(f"{dest} exists; choose another name or replace it", params=("name", "replace"))
        publish(dest, build)
    return Bundle.load(dest)


def test_metrics(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The model's `test` numbers for `edgecxr models`, from whichever stage measured them:
    `evaluate --split test`, else training's metrics, else the newest gate `verify` ran on test.
    None if none did (each artifact's own gate numbers are shown beside it: `gate_on_test`)."""
    ev = (meta.get("evaluations") or {}).get("test") or {}
    if ev.get("accuracy") is not None:
        return {"n": ev.get("n"), "accuracy": ev["accuracy"], "covid_sensitivity": ev.get("covid_sensitivity"),
                "by": f"evaluate ({ev.get('artifact', 'keras')})"}
    test = (meta.get("metrics") or {}).get("test") or {}
    if test.get("accuracy") is not None:
        covid = (test.get("per_class") or {}).get("covid") or {}
        return {"n": test.get("n"), "accuracy": test["accuracy"], "covid_sensitivity": covid.get("recall"),
                "by": "the trained model"}
    gated = [(str(g.get("time") or ""), k, g) for k, g in gate_on_test(meta).items()]
    if gated:
        _, key, g = max(gated, key=lambda r: r[:2])
        return {"n": g["n"], "accuracy": g["accuracy"], "covid_sensitivity": g["covid_sensitivity"], "by": f"verify ({key})"}
    return None


def gate_on_test(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Artifact key -> the accuracy gate's numbers on `test` (verify, calibrate), where recorded."""
    out = {}
    for key, g in (meta.get("gate") or {}).items():
        if isinstance(g, dict) and g.get("split") == "test" and g.get("accuracy") is not None:
            out[key] = {"n": g.get("n"), "accuracy": g["accuracy"], "covid_sensitivity": g.get("covid_sensitivity"),
                        "passed": g.get("passed"), "time": g.get("time")}
    return out


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
                              "sha256": (meta.get("artifact_sha256") or {}).get(key),
                              "gate_on_test": gate_on_test(meta).get(key)}
    return {
        "name": entry.name,
        "source": entry.source,
        "model": bundle.model,
        "classes": bundle.classes,
        "input_shape": meta.get("input_shape"),
        "precisions": sorted(k.split("_", 1)[1] for k in artifacts if k.startswith("onnx_")),
        "artifacts": artifacts,
        "test": test_metrics(meta),
        "bytes": sum(a["bytes"] for a in artifacts.values()),
        "location": str(entry.path),
    }
